import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from kibble.predict import expand_paths, predict, run_threshold
from shards import ShardReader, load_manifest
from shards.errors import UserError
from tests.conftest import train_tiny_conv2

SIZE = (24, 32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(image folder, shard folder, run directory): 12 generated pictures per class, a 1-epoch conv2."""
    return train_tiny_conv2(tmp_path_factory.mktemp("predict"), SIZE)


def _shard_images(shards):
    """{file name: uint8 image} of every image in the shards."""
    manifest = load_manifest(shards)
    found = {}
    for entry in manifest.shards():
        with ShardReader(manifest.shard_path(entry)) as shard:
            found.update(zip(shard.names, shard.read(0, shard.count)))
    return found


def test_predict_scores_a_file_as_evaluate_scores_its_shard_image(trained):
    import keras

    images, shards, run_dir = trained
    stored = _shard_images(shards)
    names = sorted(stored)
    model = keras.saving.load_model(os.path.join(run_dir, "best.keras"), compile=False)
    expected = np.asarray(model.predict_on_batch(np.stack([stored[n] for n in names]))).reshape(-1)

    results = list(predict(images, run_dir, batch_size=5))
    assert [os.path.basename(r["file"]) for r in results] == names  # sorted walk, every image once
    got = np.array([r["p_cat"] for r in results])
    assert np.allclose(got, expected, atol=1e-5, rtol=0)
    assert np.ptp(got) > 1e-4  # the model does tell the images apart: the match is not trivial
    assert all(r["error"] is None and r["label"] == ("cat" if r["p_cat"] > 0.5 else "dog") for r in results)


def test_batch_size_changes_nothing_and_single_files_work(trained):
    images, _, run_dir = trained
    one_batch = list(predict([images], run_dir, batch_size=64))
    small = list(predict(images, run_dir, batch_size=1))
    assert [r["file"] for r in small] == [r["file"] for r in one_batch]
    assert np.allclose([r["p_cat"] for r in small], [r["p_cat"] for r in one_batch], atol=1e-5)
    single = list(predict(os.path.join(images, "dog.3.jpg"), run_dir))
    assert len(single) == 1 and single[0]["file"].endswith("dog.3.jpg")


def test_folders_expand_recursively_to_images_only(tmp_path):
    for rel in ("b/x.JPG", "a/y.png", "a/deep/z.jpeg", "a/notes.txt", "top.Png"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    found = [(os.path.relpath(p, tmp_path), problem)
             for p, problem in expand_paths([str(tmp_path), str(tmp_path / "a/notes.txt")])]
    assert found == [("top.Png", None), ("a/y.png", None), ("a/deep/z.jpeg", None), ("b/x.JPG", None),
                     ("a/notes.txt", None)]


def test_threshold_comes_from_metrics_json_else_half(trained, tmp_path):
    images, _, run_dir = trained
    value, origin = run_threshold(run_dir)
    assert value == 0.5 and origin.startswith("default 0.5")
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    with open(os.path.join(copy, "metrics.json"), "w") as f:
        json.dump({"threshold": {"value": 0.0, "chosen_on": "val"}}, f)
    value, origin = run_threshold(copy)
    assert value == 0.0 and origin.startswith("chosen on val")
    assert {r["label"] for r in predict(images, copy)} == {"cat"}


def test_cli_reports_a_broken_file_predicts_the_rest_and_exits_1(trained, tmp_path):
    images, _, run_dir = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("cat.0.jpg", "dog.0.jpg", "dog.1.jpg"):
        shutil.copy(os.path.join(images, name), folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "readme.txt").write_text("ignored")

    result = CliRunner().invoke(cli, ["predict", str(folder), "--run", run_dir, "--format", "csv"])
    assert result.exit_code == 1, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [os.path.basename(r["file"]) for r in rows] == ["broken.jpg", "cat.0.jpg", "dog.0.jpg", "dog.1.jpg"]
    assert rows[0]["p_cat"] == "" and rows[0]["label"] == "" and "image" in rows[0]["error"]
    assert all(0 <= float(r["p_cat"]) <= 1 and r["label"] in ("cat", "dog") and not r["error"] for r in rows[1:])
    assert "3 predicted" in result.stderr and "1 failed" in result.stderr
    assert "threshold 0.50 default 0.5" in result.stderr


def test_cli_json_and_table_exit_0_when_all_files_work(trained):
    images, _, run_dir = trained
    files = [os.path.join(images, "cat.1.jpg"), os.path.join(images, "dog.2.jpg")]
    result = CliRunner().invoke(cli, ["predict", *files, "--run", run_dir, "--format", "json"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert [r["file"] for r in parsed] == files and all(r["error"] is None for r in parsed)
    table = CliRunner().invoke(cli, ["predict", *files, "--run", run_dir])
    lines = table.stdout.splitlines()
    assert table.exit_code == 0 and lines[0].split() == ["p_cat", "label", "file"] and len(lines) == 3
    assert lines[1].endswith("cat.1.jpg")


def test_predict_names_a_missing_run(tmp_path):
    with pytest.raises(UserError, match="no run directory at"):
        list(predict(str(tmp_path), str(tmp_path / "nope")))
    result = CliRunner().invoke(cli, ["predict", str(tmp_path), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "no training run in" in result.stderr


def test_two_class_output_ignores_top_k(trained):
    images, _, run_dir = trained
    files = [os.path.join(images, "cat.1.jpg"), os.path.join(images, "dog.2.jpg")]
    plain = CliRunner().invoke(cli, ["predict", *files, "--run", run_dir, "--format", "csv"])
    topped = CliRunner().invoke(cli, ["predict", *files, "--run", run_dir, "--format", "csv", "--top-k", "2"])
    assert plain.exit_code == topped.exit_code == 0 and topped.stdout == plain.stdout
    assert plain.stdout.splitlines()[0] == "file,p_cat,label,error"


# ---- predict --tta: the scores and the threshold of evaluate --tta ---------------------------------

def _ece(scores, labels, bins=15):
    """Expected calibration error of the probability of cat, worked out here without evaluate's code."""
    which = np.clip(np.ceil(scores * bins).astype(int) - 1, 0, bins - 1)
    return sum(abs(labels[which == b].sum() - scores[which == b].sum()) for b in range(bins)) / len(scores)


def test_predict_tta_gives_evaluate_tta_probabilities_and_threshold(trained, tmp_path):
    from evaluate import evaluate_run
    from tests.conftest import read_split

    images, shards, run_dir = trained
    run = str(tmp_path / "run")
    shutil.copytree(run_dir, run)  # evaluate writes metrics.json into the run: keep the shared one clean
    metrics = evaluate_run(run, batch_size=5, progress=False, tta=True)

    result = CliRunner().invoke(cli, ["predict", images, "--run", run, "--format", "json", "--batch-size", "7",
                                      "--tta"])
    assert result.exit_code == 0, result.output
    tta = {os.path.basename(r["file"]): r for r in json.loads(result.stdout)}
    plain = {os.path.basename(r["file"]): r["p_cat"] for r in predict(images, run, batch_size=7)}
    assert max(abs(tta[n]["p_cat"] - plain[n]) for n in plain) > 1e-4  # the mirror does change the scores

    for split in ("val", "test"):
        _, labels, names = read_split(shards, split)
        scores = np.array([tta[n]["p_cat"] for n in names])
        got = metrics["splits"][split]
        assert got["mse"] == pytest.approx(np.mean((scores - labels) ** 2), abs=1e-6)
        assert got["ece"] == pytest.approx(_ece(scores, labels), abs=1e-6)
        for mistake in got["confident_mistakes"]:
            assert tta[mistake["name"]]["p_cat"] == pytest.approx(mistake["score"], abs=1e-5)
    threshold = metrics["threshold"]["value"]
    assert all(r["label"] == ("cat" if r["p_cat"] > threshold else "dog") for r in tta.values())
    assert f"--tta; threshold {threshold:.2f} chosen on val by `evaluate --tta`" in result.stderr


def _write_metrics(run, document):
    with open(os.path.join(run, "metrics.json"), "w") as f:
        json.dump(document, f)


def test_each_way_of_scoring_takes_its_own_threshold_and_falls_back_to_the_other(trained, tmp_path):
    images, _, run_dir = trained
    run = str(tmp_path / "run")
    shutil.copytree(run_dir, run)
    _write_metrics(run, {"threshold": {"value": 0.2, "chosen_on": "val"}, "tta": None,
                         "thresholds": {"plain": {"value": 0.2, "chosen_on": "val"},
                                        "flip": {"value": 0.7, "chosen_on": "val"}}})
    assert run_threshold(run) == (0.2, f"chosen on val by `evaluate` ({run}/metrics.json)")
    assert run_threshold(run, tta=True) == (0.7, f"chosen on val by `evaluate --tta` ({run}/metrics.json)")
    results = list(predict(images, run, tta=True))
    assert all(r["label"] == ("cat" if r["p_cat"] > 0.7 else "dog") for r in results)

    # a metrics.json of evaluate --tta from before thresholds were kept per way
    _write_metrics(run, {"threshold": {"value": 0.7, "chosen_on": "val"}, "tta": "flip"})
    assert run_threshold(run, tta=True)[0] == 0.7
    value, origin = run_threshold(run)
    assert value == 0.7 and "by `evaluate --tta`" in origin and "`evaluate` records the one for these scores" in origin
    # N classes have no threshold: 0.5, and the command to run is named
    _write_metrics(run, {"threshold": {"value": None, "chosen_on": None}, "tta": "flip"})
    assert run_threshold(run, tta=True) == (0.5, f"default 0.5 (no usable metrics.json in {run}: run "
                                                 "`evaluate --tta`)")


def test_a_threshold_chosen_for_another_best_keras_is_used_and_flagged(trained, tmp_path):
    from shards.format import sha256_file

    _, _, run_dir = trained
    run = str(tmp_path / "run")
    shutil.copytree(run_dir, run)
    best = os.path.join(run, "best.keras")
    entry = {"value": 0.3, "chosen_on": "val", "checkpoint": "best.keras", "checkpoint_sha256": sha256_file(best)}
    _write_metrics(run, {"thresholds": {"plain": entry}})
    value, origin = run_threshold(run)
    assert value == 0.3 and "WARNING" not in origin
    # train --resume --epochs N wrote a new best.keras after evaluate chose the threshold
    shutil.copyfile(os.path.join(run, "last.keras"), best)
    with open(best, "ab") as f:
        f.write(b"\0")
    value, origin = run_threshold(run)
    assert value == 0.3
    assert "WARNING: best.keras has changed since" in origin and "run `evaluate` again" in origin
    value, origin = run_threshold(run, tta=True)  # the other way's threshold, flagged the same way
    assert value == 0.3 and "run `evaluate --tta` again" in origin
