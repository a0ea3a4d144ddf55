"""A damaged or odd metrics.json never stops predict: each way of scoring takes its own val threshold
when one is usable, the other way's next (said so), 0.5 last. No TensorFlow: only the threshold is read."""
import json
import os

import pytest

from evaluate.run import recorded_thresholds
from kibble.predict import run_threshold

VALID = {"value": 0.3, "chosen_on": "val"}


def _doc(**thresholds):
    return json.dumps({"threshold": VALID, "tta": None, "thresholds": thresholds}).encode()


CASES = [
    # (case, metrics.json bytes or None for no file, tta, expected threshold, part of the origin)
    ("no metrics.json", None, False, 0.5, "run `evaluate`"),
    ("no metrics.json, tta", None, True, 0.5, "run `evaluate --tta`"),
    ("not JSON", b"{not json", True, 0.5, "default 0.5"),
    ("not UTF-8", b"\xff\xfe\x00garbage", False, 0.5, "default 0.5"),
    ("empty file", b"", False, 0.5, "default 0.5"),
    ("a JSON list", b"[1, 2]", False, 0.5, "default 0.5"),
    ("own way's value above 1", _doc(plain=VALID, flip={"value": 1.5, "chosen_on": "val"}), True, 0.3,
     "by `evaluate`"),
    ("own way's value a bool",
     _doc(plain={"value": True, "chosen_on": "val"}, flip={"value": 0.6, "chosen_on": "val"}),
     False, 0.6, "`evaluate` records the one for these scores"),
    ("own way's value a string", _doc(flip={"value": "0.4", "chosen_on": "val"}), True, 0.5, "default 0.5"),
    ("own way's value NaN", b'{"thresholds": {"flip": {"value": NaN, "chosen_on": "val"}}}', True, 0.5,
     "default 0.5"),
    ("an unknown way only", _doc(mirror={"value": 0.2, "chosen_on": "val"}), False, 0.5, "default 0.5"),
    ("thresholds not an object: the single threshold, by its tta",
     json.dumps({"threshold": {"value": 0.8, "chosen_on": "val"}, "tta": "flip", "thresholds": [0.1]}).encode(),
     True, 0.8, "by `evaluate --tta`"),
    ("an N-class metrics.json", json.dumps({"threshold": {"value": None, "chosen_on": None}, "tta": None}).encode(),
     False, 0.5, "default 0.5"),
]


@pytest.mark.parametrize("content, tta, value, origin", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_predict_threshold_survives_any_metrics_json(tmp_path, content, tta, value, origin):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"image_size": [8, 8], "fit": "stretch"}))
    if content is not None:
        (run / "metrics.json").write_bytes(content)
    found, said = run_threshold(str(run), tta=tta)
    assert found == value and origin in said


def test_metrics_json_that_is_a_folder_gives_the_default(tmp_path):
    os.makedirs(tmp_path / "run" / "metrics.json")
    assert run_threshold(str(tmp_path / "run"), tta=True)[0] == 0.5


def test_only_usable_entries_are_recorded():
    found = recorded_thresholds({"thresholds": {"plain": {"value": 0, "chosen_on": "val"},
                                                "flip": {"value": -0.1, "chosen_on": "val"}, "other": VALID}})
    assert found == {"plain": {"value": 0, "chosen_on": "val"}}
    assert recorded_thresholds(None) == {} and recorded_thresholds("text") == {}
