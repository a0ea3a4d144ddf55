import collections
import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from evaluate import compare_runs, evaluate_run, markdown_table
from evaluate.compare import COLUMNS
from ingest import IngestSettings, ingest
from shards import ShardReader, UserError, load_manifest
from tests.conftest import make_kaggle_folder, read_split
from train.rundir import Runs

SIZE = (16, 20)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPLIT_KEYS = {"count", "cats", "dogs", "mse", "pearson_r", "log_loss", "roc_auc", "accuracy_at",
              "best_accuracy", "best_accuracy_threshold", "threshold", "accuracy", "precision", "recall",
              "f1", "ece", "calibration_bins", "confusion", "undefined", "confident_mistakes"}
TOP_KEYS = {"schema_version", "created", "run", "model", "checkpoint", "checkpoint_sha256", "tta", "data",
            "manifest_sha256", "same_data_as_training", "image_size", "threshold", "thresholds",
            "accuracy_thresholds", "splits", "figures", "seconds"}

# The tiny model is Rescaling -> mean colour -> Dense(sigmoid); its weights
# act on the mean (R, G, B) in 0..1. Generated cats are red (R 200, B 55),
# dogs blue (R 40, B 215), and G is the file number, so:
MOSTLY_RIGHT = ([4.0, 40.0, -4.0], -3.0)  # dogs all right, low-numbered cats scored below 0.5
INVERTED = ([-8.0, 0.0, 8.0], 0.0)         # every image wrong, confidently


def ingest_small(root, name, val=0.2, test=0.2):
    src = os.path.join(root, "train")
    if not os.path.isdir(src):
        make_kaggle_folder(src, cats=30, dogs=30)
    out = os.path.join(root, name)
    ingest(src, out, IngestSettings(size=SIZE, shard_size=8, val=val, test=test), scheduler="sync", progress=False)
    return out


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    # 30 cats + 30 dogs: val and test hold 12 images each, in shards of 8 + 4
    return ingest_small(str(tmp_path_factory.mktemp("data")), "shards")


def make_run(runs_root, shard_dir, name, weights=MOSTLY_RIGHT, size=SIZE):
    """A run directory as `train` leaves it, with a tiny but real Keras model."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((*size, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, 256, (16, *size, 3), dtype=np.uint8), rng.integers(0, 2, 16),
              batch_size=8, epochs=1, verbose=0)
    kernel, bias = weights
    model.layers[-1].set_weights([np.array(kernel).reshape(3, 1), np.array([bias])])
    run_dir = os.path.join(runs_root, name)
    os.makedirs(run_dir)
    model.save(os.path.join(run_dir, "best.keras"))
    manifest = load_manifest(shard_dir)
    config = {"model": "tiny", "data": os.path.abspath(shard_dir), "manifest_sha256": manifest.checksum,
              "image_size": list(size), "fit": "stretch", "train_size": manifest.split_count("train"),
              "val_size": manifest.split_count("val"), "epochs": 2, "batch_size": 8, "lr": 1e-3,
              "loss": "mse", "seed": 0, "params": int(model.count_params())}
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(run_dir, "history.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr"])
        writer.writerows([[1, 0.30, 0.60, 0.31, 0.58, 2.0, 1e-3], [2, 0.20, 0.70, 0.25, 0.66, 3.0, 1e-3]])
    with open(os.path.join(runs_root, "LATEST"), "w") as f:
        f.write(name + "\n")
    return run_dir


@pytest.fixture(scope="module")
def evaluated(shard_dir, tmp_path_factory):
    """(run directory, the dict evaluate_run returned) of a mostly right model."""
    runs = str(tmp_path_factory.mktemp("runs"))
    run_dir = make_run(runs, shard_dir, "tiny-1")
    return run_dir, evaluate_run(run_dir, batch_size=5, progress=False)


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_writes_metrics_json_report_and_pictures(evaluated):
    run_dir, result = evaluated
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert set(metrics) == TOP_KEYS
    assert {k: v for k, v in result.items() if k not in ("out", "warnings")} == metrics
    assert result["out"] == run_dir and result["warnings"] == []
    assert list(metrics["splits"]) == ["val", "test"]
    for split in ("val", "test"):
        part = metrics["splits"][split]
        assert set(part) == SPLIT_KEYS
        assert (part["count"], part["cats"], part["dogs"]) == (12, 6, 6)
        assert list(part["accuracy_at"]) == [f"{t:.2f}" for t in metrics["accuracy_thresholds"]]
        assert sum(part["confusion"].values()) == 12
    assert metrics["model"] == "tiny" and metrics["checkpoint"] == "best.keras"
    assert metrics["image_size"] == list(SIZE) and metrics["same_data_as_training"] is True
    assert metrics["threshold"]["chosen_on"] == "val"

    assert set(metrics["figures"]) == {"roc", "accuracy_vs_threshold", "score_histograms", "confusion",
                                       "reliability", "training_curves", "mistakes_test"}
    with open(os.path.join(run_dir, "report.md")) as f:
        report = f.read()
    for relative in metrics["figures"].values():
        assert_png(os.path.join(run_dir, relative))
        assert f"]({relative})" in report
    assert "| MSE |" in report and "chosen on val" in report and "No mistakes on val" in report
    assert "| expected calibration error (probability of cat) |" in report


def test_metrics_agree_with_a_direct_computation(evaluated, shard_dir):
    import keras

    run_dir, result = evaluated
    model = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    scores, labels = {}, {}
    for split in ("val", "test"):
        images, labels[split], _ = read_split(shard_dir, split)
        scores[split] = model.predict(images, verbose=0).reshape(-1).astype(np.float64)
    # the threshold: best val accuracy on 0.00..1.00, nearest 0.5 among ties
    grid = np.arange(101) / 100
    val_acc = np.array([np.mean((scores["val"] > t) == (labels["val"] == 1)) for t in grid])
    tied = grid[val_acc == val_acc.max()]
    threshold = tied[np.argmin(np.abs(tied - 0.5))]
    assert result["threshold"]["value"] == threshold
    test = result["splits"]["test"]
    assert test["threshold"] == threshold
    assert test["accuracy"] == pytest.approx(np.mean((scores["test"] > threshold) == (labels["test"] == 1)))
    for split in ("val", "test"):
        part, s, y = result["splits"][split], scores[split], labels[split]
        assert part["mse"] == pytest.approx(np.mean((s - y) ** 2), abs=1e-6)
        assert part["pearson_r"] == pytest.approx(np.corrcoef(s, y)[0, 1], abs=1e-6)
        pairs = (s[y == 1][:, None] > s[y == 0][None, :]).mean()
        assert part["roc_auc"] == pytest.approx(pairs)
    # this model misses a cat or two on test (low file numbers), never a dog
    assert test["confusion"]["fp"] == 0 and test["confusion"]["fn"] >= 1


def _count_opens(monkeypatch):
    """A Counter of the shard files opened from now on, by file name."""
    opened = collections.Counter()
    original = ShardReader.__init__

    def counting(self, path):
        opened[os.path.basename(str(path))] += 1
        original(self, path)

    monkeypatch.setattr(ShardReader, "__init__", counting)
    return opened


def test_confident_mistakes_are_listed_worst_first_and_drawn(shard_dir, tmp_path, monkeypatch):
    run_dir = make_run(str(tmp_path), shard_dir, "inverted", weights=INVERTED)
    out = str(tmp_path / "elsewhere")
    opened = _count_opens(monkeypatch)
    result = evaluate_run(run_dir, out=out, progress=False)
    # Every image is a mistake here, and their names and pictures come from
    # the one scoring pass: each shard is opened once by the check, once to score.
    assert opened == {"val-00000.h5": 2, "val-00001.h5": 2, "test-00000.h5": 2, "test-00001.h5": 2}
    assert result["out"] == out and not os.path.exists(os.path.join(run_dir, "metrics.json"))
    _, labels, names = read_split(shard_dir, "test")
    # On val, accuracy is 0.5 at thresholds below every cat's score (~0.004:
    # all called cat) and at 1.00 (all dog), 0 between; the tie goes to the
    # low threshold, nearer 0.5.
    assert result["threshold"]["value"] < 0.05
    mistakes = result["splits"]["test"]["confident_mistakes"]
    assert len(mistakes) == 6 and {m["label"] for m in mistakes} == {0}  # the dogs, called cats
    assert all(names[m["index"]] == m["name"] and labels[m["index"]] == m["label"] for m in mistakes)
    assert all(m["label"] == (1 if m["name"].startswith("cat.") else 0) for m in mistakes)
    errors = [abs(m["score"] - m["label"]) for m in mistakes]
    assert errors == sorted(errors, reverse=True) and min(errors) > 0.9
    assert result["splits"]["test"]["roc_auc"] == 0.0 and result["splits"]["test"]["accuracy"] == 0.5
    for split in ("val", "test"):
        assert_png(os.path.join(out, result["figures"][f"mistakes_{split}"]))


def _worst_of_all(scores, labels, threshold, keep):
    """The worst mistakes picked from every score at once, as evaluate did before it kept candidates."""
    wrong = np.flatnonzero((scores > threshold) != (labels == 1))
    return wrong[np.argsort(-np.abs(scores[wrong] - labels[wrong]), kind="stable")][:keep].tolist()


@pytest.mark.parametrize("batch_size", [1, 7, 64, 300])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.95, 1.0])
def test_candidates_kept_during_the_pass_hold_the_worst_mistakes_at_any_threshold(batch_size, threshold):
    from evaluate.run import _Candidates

    rng = np.random.default_rng(batch_size)
    count = 300
    scores = np.round(rng.random(count), 1)  # many ties: the first seen must win them
    labels = rng.integers(0, 2, count).astype(np.int8)
    images = np.stack([np.arange(count) // 256, np.arange(count) % 256], axis=1).astype(np.uint8)
    candidates = _Candidates(keep=16)
    for first in range(0, count, batch_size):
        rows = slice(first, first + batch_size)
        candidates.add(scores[rows], labels[rows], [f"n{i}" for i in range(first, first + batch_size)],
                       images[rows], first)
    assert sum(len(pool) for pool in candidates.pools.values()) <= 32
    mistakes, pictures = candidates.worst(threshold)
    expected = _worst_of_all(scores, labels, threshold, 16)
    assert expected and [m["index"] for m in mistakes] == expected
    assert [m["name"] for m in mistakes] == [f"n{i}" for i in expected]
    assert [(m["label"], m["score"]) for m in mistakes] == [(labels[i], scores[i]) for i in expected]
    assert pictures.tolist() == images[expected].tolist()


def test_val_only(evaluated, tmp_path):
    run_dir, _ = evaluated
    result = evaluate_run(run_dir, splits="val", out=str(tmp_path), progress=False)
    assert list(result["splits"]) == ["val"] and "mistakes_test" not in result["figures"]


def test_test_split_without_val_uses_default_threshold_and_says_so(tmp_path):
    shards = ingest_small(str(tmp_path), "no-val", val=0, test=0.2)
    run_dir = make_run(str(tmp_path / "runs"), shards, "tiny-1")
    result = evaluate_run(run_dir, splits=("test",), progress=False)
    assert list(result["splits"]) == ["test"]
    assert result["threshold"]["value"] == 0.5 and "no val split" in result["threshold"]["chosen_on"]
    with pytest.raises(UserError, match=r"no 'val' split \(splits present: train, test\)"):
        evaluate_run(run_dir, splits=("val", "test"), progress=False)


def test_other_data_gives_a_warning(evaluated, shard_dir, tmp_path):
    run_dir, _ = evaluated
    copy = str(tmp_path / "copy")
    shutil.copytree(shard_dir, copy)
    with open(os.path.join(copy, "manifest.json"), "a") as f:
        f.write("\n")  # same shards, different manifest bytes
    result = evaluate_run(run_dir, data=copy, splits="val", out=str(tmp_path / "out"), progress=False)
    assert result["same_data_as_training"] is False
    assert len(result["warnings"]) == 1 and "not the data this run was trained on" in result["warnings"][0]


def test_no_run_yet(tmp_path):
    with pytest.raises(UserError, match="no training run in .*run `train` first"):
        Runs(str(tmp_path / "runs")).latest().path
    with pytest.raises(UserError, match="no run directory at .*run `train` first"):
        evaluate_run(str(tmp_path / "runs" / "nope"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="not a run directory \\(no config.json\\)"):
        evaluate_run(str(tmp_path / "empty"))


def test_run_without_model(evaluated, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(evaluated[0], run_dir)
    os.remove(os.path.join(run_dir, "best.keras"))
    with pytest.raises(UserError, match=r"no best.keras in .*run: training has not finished an epoch"):
        evaluate_run(run_dir, progress=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_model_file(evaluated, tmp_path, damage):
    run_dir = str(tmp_path / "run")
    shutil.copytree(evaluated[0], run_dir)
    path = os.path.join(run_dir, "best.keras")
    if damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"not a model at all")
    else:
        os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(UserError, match=r"cannot load the model .*best.keras .*damaged or not a Keras model") as err:
        evaluate_run(run_dir, progress=False)
    assert "\n" not in str(err.value)


def test_wrong_input_size(shard_dir, tmp_path):
    run_dir = make_run(str(tmp_path), shard_dir, "small", size=(8, 10))
    with pytest.raises(UserError, match=r"takes images of 8x10x3, but the shards in .* hold 16x20x3; "
                                        r"pass --data with shards ingested at --size 8x10"):
        evaluate_run(run_dir, progress=False)


def test_missing_data_folder(evaluated, tmp_path):
    with pytest.raises(UserError, match="no shard folder at .*nowhere: run `ingest` first"):
        evaluate_run(evaluated[0], data=str(tmp_path / "nowhere"), progress=False)


def test_bad_arguments_name_the_argument(evaluated):
    with pytest.raises(ValueError, match="splits must be .*Received: splits=\\('unlabeled',\\)"):
        evaluate_run(evaluated[0], splits=("unlabeled",))
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        evaluate_run(evaluated[0], checkpoint="first")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        evaluate_run(evaluated[0], batch_size=0)


def test_compare_evaluates_missing_runs_and_reuses_metrics(evaluated, shard_dir, tmp_path):
    run_a, _ = evaluated
    metrics_a = os.path.join(run_a, "metrics.json")
    before = os.path.getmtime(metrics_a)
    run_b = make_run(str(tmp_path / "runs"), shard_dir, "inverted", weights=INVERTED)
    out = str(tmp_path / "tables" / "compare.md")
    rows = compare_runs([run_a, run_b], out=out, progress=False)
    assert os.path.getmtime(metrics_a) == before  # up to date: not evaluated again
    assert os.path.exists(os.path.join(run_b, "metrics.json"))
    assert [set(row) for row in rows] == [{key for key, _, _ in COLUMNS}] * 2
    a, b = rows
    assert (a["run"], a["model"], a["train_size"], a["val_size"], a["epochs"]) == ("tiny-1", "tiny", 36, 12, 2)
    assert a["params"] == 4 and a["seconds_per_epoch"] == 2.5 and a["model_mb"] > 0
    assert a["test_class_counts"] == "6 / 6" and a["classes"] is None  # dogs / cats; this config names none
    assert a["val_best_accuracy"] > 0.8 and b["val_roc_auc"] == 0.0 and b["test_accuracy"] == 0.5
    with open(out) as f:
        table = f.read()
    assert table == markdown_table(rows) + "\n"
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | model | params |")
    assert lines[3].startswith("| inverted | tiny | 4 |")


def test_compare_evaluates_again_when_the_model_changed(shard_dir, tmp_path):
    run_dir = make_run(str(tmp_path), shard_dir, "tiny-1", weights=INVERTED)
    first = compare_runs([run_dir], progress=False)[0]
    os.remove(os.path.join(run_dir, "best.keras"))
    shutil.rmtree(os.path.join(run_dir, "figures"))
    replacement = make_run(str(tmp_path / "other"), shard_dir, "tiny-1")
    shutil.copy(os.path.join(replacement, "best.keras"), os.path.join(run_dir, "best.keras"))
    second = compare_runs([run_dir], progress=False)[0]
    assert first["val_roc_auc"] == 0.0 and second["val_roc_auc"] > 0.9


def test_compare_s_per_epoch_leaves_out_an_epoch_a_time_budget_cut_short(evaluated, tmp_path):
    run_dir = str(tmp_path / "tiny-1")
    shutil.copytree(evaluated[0], run_dir)
    with open(os.path.join(run_dir, "history.csv"), "w", newline="") as f:  # 2 whole epochs, 1 batch of a third
        csv.writer(f).writerows([["epoch", "loss", "seconds", "batches"], [1, 0.3, 2.0, 5], [2, 0.2, 3.0, 5],
                                 [3, 0.2, 0.5, 1]])
    row = compare_runs([run_dir], progress=False)[0]
    assert row["epochs"] == 3 and row["seconds_per_epoch"] == 2.5


def test_compare_scores_plainly_after_evaluate_tta_and_keeps_its_threshold(evaluated, tmp_path):
    run_dir = str(tmp_path / "tiny-1")
    shutil.copytree(evaluated[0], run_dir)  # compare writes into the run: keep the shared one as it is
    tta = evaluate_run(run_dir, splits=("val",), batch_size=6, progress=False, tta=True)
    compare_runs([run_dir], progress=False)
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["tta"] is None and metrics["created"] >= tta["created"]
    assert metrics["thresholds"]["flip"] == tta["thresholds"]["flip"]  # predict --tta still finds it


def test_cli_help_has_examples():
    from click.testing import CliRunner

    from cli import cli

    for command in ("evaluate", "compare"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output
        assert f"python cli.py {command}" in result.output


def test_cli_no_run_exits_2_with_one_line(tmp_path):
    from click.testing import CliRunner

    from cli import cli

    runs = str(tmp_path / "runs")
    result = CliRunner().invoke(cli, ["evaluate", "--runs", runs])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: no training run in {runs}/: run `train` first (or name a run directory)"]
    result = CliRunner().invoke(cli, ["compare", "--runs", runs])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"Error: no run to compare in {runs}/")


def test_cli_evaluate_newest_run_and_compare(evaluated, shard_dir, tmp_path):
    from click.testing import CliRunner

    from cli import cli

    run_dir, _ = evaluated
    runs_root = os.path.dirname(run_dir)  # its LATEST names tiny-1
    out = str(tmp_path / "eval")
    result = CliRunner().invoke(cli, ["evaluate", "--runs", runs_root, "--split", "val", "--out", out,
                                      "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    assert os.path.exists(os.path.join(out, "metrics.json")) and os.path.exists(os.path.join(out, "report.md"))
    summary = result.stderr.splitlines()
    assert summary[-3].split()[:2] == ["split", "images"] and summary[-2].split()[:2] == ["val", "12"]
    assert summary[-3].split()[-1] == "ECE"
    with open(os.path.join(out, "metrics.json")) as f:
        assert summary[-2].split()[-1] == f"{json.load(f)['splits']['val']['ece']:.3f}"
    assert summary[-1].startswith("threshold ") and "chosen on val;" in summary[-1]

    table = str(tmp_path / "compare.md")
    result = CliRunner().invoke(cli, ["compare", run_dir, run_dir, "--out", table])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| tiny-1 | tiny | 4 |")
    with open(table) as f:
        assert f.read().strip() == result.stdout.strip()


def test_tta_scores_are_the_mean_over_the_image_and_its_mirror(evaluated, shard_dir, tmp_path):
    import keras

    run_dir, plain = evaluated
    result = evaluate_run(run_dir, splits=("val",), out=str(tmp_path), batch_size=5, progress=False, tta=True)
    model = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    images, labels, _ = read_split(shard_dir, "val")
    scores = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)).reshape(-1) / 2
    assert result["tta"] == "flip" and plain["tta"] is None
    assert result["splits"]["val"]["mse"] == pytest.approx(np.mean((scores - labels) ** 2), abs=1e-6)
    assert result["splits"]["val"]["ece"] == pytest.approx(_ece(scores, labels), abs=1e-6)
    # the tiny model sees only mean colours, which a mirror keeps: the same calibration as plain
    assert result["splits"]["val"]["ece"] == pytest.approx(plain["splits"]["val"]["ece"], abs=1e-6)


def _ece(scores, labels, bins=15):
    """Expected calibration error of the probability of cat, worked out here without evaluate's code."""
    which = np.clip(np.ceil(scores * bins).astype(int) - 1, 0, bins - 1)
    return sum(abs(labels[which == b].sum() - scores[which == b].sum()) for b in range(bins)) / len(scores)


def test_plain_and_tta_thresholds_are_both_kept_for_the_same_model(evaluated, tmp_path):
    run_dir, _ = evaluated
    out = str(tmp_path / "out")
    plain = evaluate_run(run_dir, splits=("val",), out=out, batch_size=6, progress=False)
    assert list(plain["thresholds"]) == ["plain"]
    assert plain["thresholds"]["plain"]["value"] == plain["threshold"]["value"]
    tta = evaluate_run(run_dir, splits=("val",), out=out, batch_size=6, progress=False, tta=True)
    assert tta["thresholds"]["plain"] == plain["thresholds"]["plain"]  # carried over as it was
    assert tta["thresholds"]["flip"] == {"value": tta["threshold"]["value"], "chosen_on": "val",
                                         "checkpoint": "best.keras", "checkpoint_sha256": tta["checkpoint_sha256"],
                                         "data": tta["data"], "created": tta["created"]}
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["thresholds"] == tta["thresholds"]


def test_a_threshold_chosen_for_another_model_file_is_not_kept():
    from evaluate.run import _thresholds

    def document(sha, tta, value):
        return {"tta": tta, "threshold": {"value": value, "chosen_on": "val"}, "checkpoint": "best.keras",
                "checkpoint_sha256": sha, "data": "/d", "created": "now"}

    earlier = {**document("a", None, 0.4), "thresholds": _thresholds(document("a", None, 0.4), None)}
    assert set(_thresholds(document("a", "flip", 0.6), earlier)) == {"plain", "flip"}
    assert set(_thresholds(document("b", "flip", 0.6), earlier)) == {"flip"}  # the model changed
    # this way's own entry is always this evaluation's, never the earlier one
    assert _thresholds(document("a", None, 0.2), earlier)["plain"]["value"] == 0.2
    # a metrics.json from before thresholds were kept per way still hands its one over
    assert _thresholds(document("a", "flip", 0.6), document("a", None, 0.4))["plain"]["value"] == 0.4


def _history_run(folder, name, rows):
    """A run directory holding only history.csv rows (epoch, seconds, val_accuracy); enough for the curve."""
    run_dir = os.path.join(folder, name)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "history.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr"])
        for epoch, seconds, val_accuracy in rows:
            writer.writerow([epoch, 0.5, 0.7, 0.6, val_accuracy, seconds, 0.001])
    return run_dir


def test_time_to_accuracy_sums_epoch_seconds_into_minutes(tmp_path):
    from evaluate.compare import save_time_to_accuracy, time_to_accuracy
    from train.rundir import RunDir

    fast = _history_run(str(tmp_path), "fast", [(1, 30, 0.6), (2, 90, 0.8), (3, 60, 0.85)])
    slow = _history_run(str(tmp_path), "slow", [(1, 300, 0.7)])
    minutes, accuracy = time_to_accuracy(RunDir(fast))
    assert minutes.tolist() == [0.5, 2.0, 3.0] and accuracy.tolist() == [0.6, 0.8, 0.85]
    path = str(tmp_path / "figs" / "curve.png")
    save_time_to_accuracy([fast, slow], path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300
    assert os.listdir(tmp_path / "figs") == ["curve.png"]  # no temporary file left beside it


def test_compare_curve_must_be_a_png_and_is_refused_before_any_evaluation(evaluated, tmp_path):
    run_a, _ = evaluated
    before = os.path.getmtime(os.path.join(run_a, "metrics.json"))
    with pytest.raises(UserError, match=r"--curve must name a \.png file"):
        compare_runs([run_a], curve=str(tmp_path / "curve.jpg"), progress=False)
    assert os.path.getmtime(os.path.join(run_a, "metrics.json")) == before
    assert not os.path.exists(tmp_path / "curve.jpg")
