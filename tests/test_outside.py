"""`check-outside`: the release check on labelled photos from another source (issue 11 item 3)."""
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from evaluate import evaluate_run
from ingest.synthetic import make_demo_images
from kibble.predict import predict
from tests.conftest import train_tiny_conv2

SIZE = (24, 32)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """(run directory, outside photos): a 1-epoch conv2 evaluated on val, and other pictures in class folders.

    The outside folder holds 8 generated pictures per class (another seed),
    the same cat picture once more in dog/ (so some photo is always wrong),
    a corrupt .jpg and a text file.
    """
    root = tmp_path_factory.mktemp("outside")
    _, _, run_dir = train_tiny_conv2(root, SIZE)
    evaluate_run(run_dir, splits=("val",), progress=False)
    other = make_demo_images(str(root / "other"), per_class=8, seed=7)
    photos = root / "photos"
    for kind in ("dog", "cat"):
        (photos / kind).mkdir(parents=True)
        for name in sorted(os.listdir(other)):
            if name.startswith(kind + "."):
                shutil.copy(os.path.join(other, name), photos / kind / name)
    shutil.copy(os.path.join(other, "cat.0.jpg"), photos / "dog" / "copy-of-cat.jpg")
    (photos / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    (photos / "dog" / "notes.txt").write_text("not a photo")
    return run_dir, str(photos)


def _check(*args):
    return CliRunner().invoke(cli, ["check-outside", *args])


def _truth(path):
    return "cat" if os.path.basename(os.path.dirname(path)) == "cat" else "dog"


def test_accuracy_is_predicts_labels_at_the_recorded_val_threshold(evaluated, tmp_path):
    run_dir, photos = evaluated
    with open(os.path.join(run_dir, "metrics.json"), "rb") as f:
        metrics_bytes = f.read()
    result = _check(photos, "--run", run_dir)
    assert result.exit_code == 0, result.output
    with open(os.path.join(run_dir, "outside.json")) as f:
        document = json.load(f)

    recorded = json.loads(metrics_bytes)["thresholds"]["plain"]["value"]
    assert document["threshold"]["value"] == recorded and document["threshold"]["chosen_on"] == "val"
    files = [os.path.join(photos, kind, name) for kind in ("cat", "dog")
             for name in sorted(os.listdir(os.path.join(photos, kind))) if name.endswith(".jpg")]
    labels = {r["file"]: r["label"] for r in predict(files, run_dir) if r["error"] is None}
    assert len(labels) == 17 == document["count"]  # 8 + 8 + the copy; the broken one skipped
    right = [labels[f] == _truth(f) for f in labels]
    assert document["accuracy"] == pytest.approx(np.mean(right), abs=1e-12)
    assert 0 < document["accuracy"] < 1  # the copy of a cat in dog/ is wrong whatever the model says
    recalls = {c["class"]: (c["correct"], c["count"]) for c in document["per_class"]}
    assert recalls == {kind: (sum(labels[f] == kind for f in labels if _truth(f) == kind),
                              sum(_truth(f) == kind for f in labels)) for kind in ("dog", "cat")}
    skipped = {os.path.relpath(s["file"], photos): s["reason"] for s in document["skipped"]}
    assert set(skipped) == {"cat/broken.jpg", "dog/notes.txt"}
    assert 0 <= document["ece"] <= 1 and sum(b["count"] for b in document["calibration_bins"]) == 17
    assert os.path.getsize(os.path.join(run_dir, "figures", "outside_reliability.png")) > 1000
    assert "cat/broken.jpg" in result.output and f"accuracy {document['accuracy']:.4f}" in result.output
    with open(os.path.join(run_dir, "metrics.json"), "rb") as f:
        assert f.read() == metrics_bytes  # evaluate's val/test metrics and thresholds untouched


def test_below_the_floor_exits_1_at_or_above_it_0(evaluated, tmp_path):
    run_dir, photos = evaluated
    out = str(tmp_path / "out")
    first = _check(photos, "--run", run_dir, "--out", out, "--min-accuracy", "0")
    assert first.exit_code == 0, first.output
    with open(os.path.join(out, "outside.json")) as f:
        accuracy = json.load(f)["accuracy"]
    at = _check(photos, "--run", run_dir, "--out", out, "--min-accuracy", repr(accuracy))
    assert at.exit_code == 0, at.output
    above = _check(photos, "--run", run_dir, "--out", out, "--min-accuracy", repr(min(1.0, accuracy + 1e-6)))
    assert above.exit_code == 1, above.output
    failed = [line for line in above.output.splitlines() if line.startswith("Failed:")]
    assert len(failed) == 1 and f"{accuracy:.4f}" in failed[0] and "Traceback" not in above.output
    with open(os.path.join(out, "outside.json")) as f:
        assert json.load(f)["floor"]["passed"] is False


@pytest.mark.parametrize("case, expected", [
    ("unknown class folder", "classes the run does not know: 'horse' (1 photos)"),
    ("tta never evaluated", "run `evaluate --tta` on this run first"),
    ("photos missing", "not found"),
    ("threshold of another model file", "chosen for another model file"),
])
def test_user_mistakes_are_one_error_line_exit_2(evaluated, tmp_path, case, expected):
    run_dir, photos = evaluated
    args = [photos, "--run", run_dir, "--out", str(tmp_path / "out")]
    if case == "unknown class folder":
        copy = str(tmp_path / "photos")
        shutil.copytree(photos, copy)
        os.makedirs(os.path.join(copy, "horse"))
        shutil.copy(os.path.join(photos, "dog", "dog.1.jpg"), os.path.join(copy, "horse", "h.jpg"))
        args[0] = copy
    elif case == "tta never evaluated":
        args.append("--tta")
    elif case == "photos missing":
        args[0] = str(tmp_path / "nowhere")
    elif case == "threshold of another model file":
        copy = str(tmp_path / "run")
        shutil.copytree(run_dir, copy)
        with open(os.path.join(copy, "metrics.json")) as f:
            metrics = json.load(f)
        metrics["thresholds"]["plain"]["checkpoint_sha256"] = "0" * 64
        with open(os.path.join(copy, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        args[2] = copy
    result = _check(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], result.output
    assert not os.path.exists(os.path.join(tmp_path, "out", "outside.json"))


def test_outside_scores_of_several_classes_count_recall_and_the_worst_mistakes():
    from evaluate.outside import OutsideScores, floor_verdict

    scores = OutsideScores(["a", "b", "c"])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.1, 0.85, 0.05]])
    scores.update(probabilities[:3], [0, 1, 1], ["p0", "p1", "p2"])
    scores.update(probabilities[3:], [2, 2], ["p3", "p4"])
    metrics = scores.metrics()
    assert metrics["count"] == 5 and metrics["accuracy"] == pytest.approx(3 / 5)
    assert [(c["class"], c["correct"], c["count"]) for c in metrics["per_class"]] == [("a", 1, 1), ("b", 1, 2),
                                                                                      ("c", 1, 2)]
    assert [(m["file"], m["label"], m["predicted"]) for m in metrics["mistakes"]] == [("p4", "c", "b"),
                                                                                     ("p2", "b", "a")]
    assert floor_verdict(0.6, 0.6) == {"min_accuracy": 0.6, "passed": True}
    assert floor_verdict(0.6, 0.61)["passed"] is False and floor_verdict(0.6, None)["passed"] is None


def test_two_classes_call_class_1_strictly_above_the_threshold():
    from evaluate.outside import OutsideScores

    scores = OutsideScores(["dog", "cat"], threshold=0.4)
    scores.update([0.4, 0.41, 0.1, 0.9], [0, 1, 1, 0], ["a", "b", "c", "d"])
    metrics = scores.metrics()
    assert metrics["accuracy"] == 0.5 and metrics["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert [(c["class"], c["recall"]) for c in metrics["per_class"]] == [("dog", 0.5), ("cat", 0.5)]
    assert [m["file"] for m in metrics["mistakes"]] == ["c", "d"]  # both 0.9 sure; the first seen first


def test_help_examples_parse(tmp_path, monkeypatch):
    from tests.help_examples import help_examples, parse_example

    monkeypatch.chdir(tmp_path)
    examples = help_examples("check-outside")
    assert len(examples) == 2
    for line in examples:
        name, params = parse_example(line, str(tmp_path / "home"))
        assert name == "check-outside" and params["photos"].endswith("outside-photos"), line
