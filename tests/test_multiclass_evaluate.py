"""Issue 10 item 11: evaluate with more than two classes (softmax of N outputs).

The metrics of `MulticlassAccumulator` against a case worked out by hand and
against scikit-learn (test extra only) on random data; then an end-to-end
`evaluate` of a tiny hand-weighted Keras model on 3-class shards.
"""
import json
import math
import os

import numpy as np
import pytest

from evaluate.metrics import CALIBRATION_BINS, EPSILON, MulticlassAccumulator
from tests.conftest import read_split

CLASSES = ["a", "b", "c"]
# Worked on paper below: labels a, b, c, a.
KNOWN_PROBABILITIES = [[0.7, 0.2, 0.1],    # a, predicted a (0.7)
                       [0.5, 0.4, 0.1],    # b, predicted a (0.5)
                       [0.2, 0.15, 0.65],  # c, predicted c (0.65)
                       [0.1, 0.25, 0.65]]  # a, predicted c (0.65)
KNOWN_LABELS = [0, 1, 2, 0]


def fed(probabilities, labels, classes, batch=None):
    acc = MulticlassAccumulator(classes)
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    step = batch or max(len(labels), 1)
    for start in range(0, len(labels), step):
        acc.update(probabilities[start:start + step], labels[start:start + step])
    return acc


def test_known_case_by_hand():
    result = fed(KNOWN_PROBABILITIES, KNOWN_LABELS, CLASSES, batch=3).summary()
    assert result["count"] == 4 and result["class_counts"] == [2, 1, 1]
    assert result["confusion"]["counts"] == [[1, 0, 1], [1, 0, 0], [0, 0, 1]]
    assert result["confusion"]["normalized"] == [[0.5, 0.0, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert result["accuracy"] == 0.5
    assert "top_3_accuracy" not in result and "top_5_accuracy" not in result  # 3 classes: top-3 is always right
    a, b, c = result["per_class"]
    assert (a["class"], a["support"], a["predicted"]) == ("a", 2, 2)
    assert (a["precision"], a["recall"], a["f1"]) == (0.5, 0.5, 0.5)
    assert b["precision"] is None and (b["recall"], b["f1"]) == (0.0, 0.0)  # b is never predicted
    assert (c["precision"], c["recall"]) == (0.5, 1.0) and c["f1"] == pytest.approx(2 / 3)
    assert result["undefined"] == {"precision[b]": "no image is predicted b"}
    # macro: precision over a and c only (b's is undefined)
    assert result["macro"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 7 / 18})
    assert result["weighted"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 5 / 12})
    # a against the rest: 0.7 and 0.1 against 0.5 and 0.2 -> 2 of 4 pairs; b: 0.4 above all;
    # c: 0.65 above 0.1, 0.1 and tied with 0.65 -> 2.5 of 3
    assert [x["roc_auc"] for x in result["per_class"]] == pytest.approx([0.5, 1.0, 2.5 / 3])
    assert result["macro_roc_auc"] == pytest.approx(7 / 9)
    assert result["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.4) + math.log(0.65) + math.log(0.1)) / 4)
    # top probabilities 0.7 (right, bin 10), 0.5 (wrong, bin 7), 0.65 (right) and 0.65 (wrong) (bin 9)
    assert result["ece"] == pytest.approx(0.25 * 0.3 + 0.25 * 0.5 + 0.5 * 0.15)
    bins = result["calibration_bins"]
    assert len(bins) == CALIBRATION_BINS and [b["count"] for b in bins] == [0] * 7 + [1, 0, 2, 1] + [0] * 4
    assert bins[9] == pytest.approx({"lower": 9 / 15, "upper": 10 / 15, "count": 2, "confidence": 0.65,
                                     "accuracy": 0.5})
    json.dumps(result, allow_nan=False)


def test_top_k_given_only_where_there_are_more_classes_than_k():
    labels = [0, 1, 2, 3, 4, 5]
    # the true class ranks 1st, 2nd, 3rd, 4th, 5th, 6th
    rows = []
    for rank, label in enumerate(labels):
        row = np.linspace(0.3, 0.05, 6)  # decreasing, all distinct
        order = [c for c in range(6) if c != label]
        order.insert(rank, label)
        probs = np.empty(6)
        probs[order] = row
        rows.append(probs / probs.sum())
    result = fed(rows, labels, list("uvwxyz")).summary()
    assert result["accuracy"] == pytest.approx(1 / 6)
    assert result["top_3_accuracy"] == pytest.approx(3 / 6) and result["top_5_accuracy"] == pytest.approx(5 / 6)
    four = fed(np.array(rows)[:4, :4], labels[:4], list("uvwx")).summary()
    assert "top_3_accuracy" in four and "top_5_accuracy" not in four


def _random_case(seed, n, classes, absent=None, never_predicted=None):
    """Softmax-like rows with the true class favoured; `absent` never a label, `never_predicted` never argmax."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    if absent is not None:
        labels[labels == absent] = (absent + 1) % classes
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += 1.2
    if never_predicted is not None:
        logits[:, never_predicted] -= 10
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True), labels


SKLEARN_CASES = [
    ("3-classes", *_random_case(0, 300, 3)),
    ("4-classes-batches-of-7", *_random_case(1, 97, 4)),
    ("7-classes", *_random_case(2, 500, 7)),
    ("a-class-never-predicted", *_random_case(3, 200, 5, never_predicted=2)),
    ("a-class-absent-from-the-labels", *_random_case(4, 200, 6, absent=4)),
]


@pytest.mark.parametrize("probs, labels", [case[1:] for case in SKLEARN_CASES], ids=[case[0] for case in SKLEARN_CASES])
def test_every_figure_matches_scikit_learn(probs, labels):
    metrics = pytest.importorskip("sklearn.metrics")
    classes = [f"k{i}" for i in range(probs.shape[1])]
    everything = list(range(len(classes)))
    result = fed(probs, labels, classes, batch=7).summary()
    predicted = probs.argmax(axis=1)
    assert result["confusion"]["counts"] == metrics.confusion_matrix(labels, predicted, labels=everything).tolist()
    assert result["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predicted), abs=1e-12)
    for k in (3, 5):
        if len(classes) > k:
            expected = metrics.top_k_accuracy_score(labels, probs, k=k, labels=everything)
            assert result[f"top_{k}_accuracy"] == pytest.approx(expected, abs=1e-12)
    p, r, f, s = metrics.precision_recall_fscore_support(labels, predicted, labels=everything,
                                                         zero_division=np.nan)
    for i, entry in enumerate(result["per_class"]):
        for ours, theirs in ((entry["precision"], p[i]), (entry["recall"], r[i]), (entry["f1"], f[i])):
            assert (ours is None) if np.isnan(theirs) else ours == pytest.approx(theirs, abs=1e-12)
        assert entry["support"] == s[i]
    for average in ("macro", "weighted"):
        p, r, f, _ = metrics.precision_recall_fscore_support(labels, predicted, labels=everything,
                                                             average=average, zero_division=np.nan)
        assert result[average] == pytest.approx({"precision": p, "recall": r, "f1": f}, abs=1e-12)
    present = sorted(set(labels.tolist()))
    for i, entry in enumerate(result["per_class"]):
        if i in present:
            assert entry["roc_auc"] == pytest.approx(metrics.roc_auc_score(labels == i, probs[:, i]), abs=1e-12)
        else:
            assert entry["roc_auc"] is None and f"roc_auc[k{i}]" in result["undefined"]
    if len(present) == len(classes):
        expected = metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
        assert result["macro_roc_auc"] == pytest.approx(expected, abs=1e-12)
    assert result["log_loss"] == pytest.approx(
        metrics.log_loss(labels, np.clip(probs, EPSILON, 1), labels=everything), abs=1e-12)
    json.dumps(result, allow_nan=False)


def test_streaming_equals_all_at_once():
    probs, labels = _random_case(5, 250, 5)
    whole = fed(probs, labels, list("vwxyz")).summary()
    for batch in (1, 13, 250):
        assert _close(fed(probs, labels, list("vwxyz"), batch=batch).summary(), whole)


def _close(a, b, tolerance=1e-12):
    """Recursive comparison of two summaries, floats to `tolerance`."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        return all(_close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, float):
        assert a == pytest.approx(b, abs=tolerance)
        return True
    assert a == b
    return True


def test_bad_batches_are_rejected():
    acc = MulticlassAccumulator(CLASSES)
    with pytest.raises(ValueError, match=r"shape \(n, 3\). Received: shape \(2, 2\)"):
        acc.update([[0.5, 0.5], [0.5, 0.5]], [0, 1])
    with pytest.raises(ValueError, match=r"class indices 0..2. Received: \[3\]"):
        acc.update(np.full((2, 3), 1 / 3), [0, 3])
    with pytest.raises(ValueError, match="NaN"):
        acc.update([[np.nan, 0.5, 0.5]], [0])
    assert acc.count == 0
    with pytest.raises(ValueError, match="no examples"):
        acc.summary()


# ---- end to end: a hand-weighted softmax model on 3-class shards -------------------------------

SIZE = (16, 16)
# Class folders sorted by name: apple = 0 (red), kiwi = 1 (green), plum = 2 (blue). Every fourth
# plum is purple, more red than blue, so the model calls it an apple, confidently.
COLOURS = {"apple": (220, 20, 30), "kiwi": (20, 220, 30), "plum": (30, 20, 220)}
PURPLE = (200, 20, 120)
PER_CLASS = 16


def _colour(cls, i):
    base = PURPLE if cls == "plum" and i % 4 == 0 else COLOURS[cls]
    return (base[0], base[1] + i, base[2])  # no two images alike: ingest drops duplicates


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    from PIL import Image

    from ingest import IngestSettings, ingest

    root = tmp_path_factory.mktemp("three")
    for cls in COLOURS:
        os.makedirs(root / "in" / cls)
        for i in range(PER_CLASS):
            Image.new("RGB", (20, 18), _colour(cls, i)).save(root / "in" / cls / f"{cls}{i}.png")
    out = str(root / "shards")
    ingest(str(root / "in"), out, IngestSettings(size=SIZE, shard_size=8, val=0.25, test=0.25),
           scheduler="sync", progress=False)
    return out


def make_softmax_run(runs_root, shard_dir, name, classes=3):
    """A run directory as `train` leaves it: mean colour -> Dense(classes, softmax), weights set by hand."""
    import keras

    from shards import load_manifest

    inputs = keras.Input((*SIZE, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))
    kernel = np.zeros((3, classes))
    kernel[:, :3] = 6.0 * np.eye(3)  # class k gets six times channel k
    model.layers[-1].set_weights([kernel, np.zeros(classes)])
    run_dir = os.path.join(runs_root, name)
    os.makedirs(run_dir)
    model.save(os.path.join(run_dir, "best.keras"))
    manifest = load_manifest(shard_dir)
    config = {"model": "tiny", "data": os.path.abspath(shard_dir), "manifest_sha256": manifest.checksum,
              "image_size": list(SIZE), "fit": "stretch", "classes": manifest.classes,
              "train_size": manifest.split_count("train"), "val_size": manifest.split_count("val"),
              "epochs": 1, "batch_size": 8, "lr": 1e-3, "loss": "sparse_categorical_crossentropy", "seed": 0,
              "params": int(model.count_params())}
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(run_dir, "history.csv"), "w") as f:
        f.write("epoch,loss,accuracy,val_loss,val_accuracy,seconds,lr\n1,0.9,0.6,0.8,0.7,1.5,0.001\n")
    return run_dir


SPLIT_KEYS = {"count", "class_counts", "accuracy", "per_class", "macro", "weighted", "macro_roc_auc", "log_loss",
              "ece", "calibration_bins", "confusion", "undefined", "confident_mistakes"}


def test_evaluate_three_classes_end_to_end(three_classes, tmp_path):
    import keras
    from PIL import Image

    from evaluate import evaluate_run

    run_dir = make_softmax_run(str(tmp_path), three_classes, "soft-1")
    result = evaluate_run(run_dir, batch_size=5, progress=False)
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert {k: v for k, v in result.items() if k not in ("out", "warnings")} == metrics
    assert metrics["classes"] == ["apple", "kiwi", "plum"] and "accuracy_thresholds" not in metrics
    assert metrics["threshold"]["value"] is None and "two-class idea" in metrics["threshold"]["rule"]
    assert set(metrics["figures"]) >= {"confusion", "confusion_normalized", "reliability", "training_curves"}
    for relative in metrics["figures"].values():
        with Image.open(os.path.join(run_dir, relative)) as image:
            assert image.format == "PNG" and min(image.size) > 100
    with open(os.path.join(run_dir, "report.md")) as f:
        report = f.read()
    assert "| plum |" in report and "apple, kiwi, plum" in report and "expected calibration error" in report

    model = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    purples = 0
    for split in ("val", "test"):
        part = metrics["splits"][split]
        assert set(part) == SPLIT_KEYS
        images, labels, names = read_split(three_classes, split)
        probs = model.predict(images, verbose=0).astype(np.float64)
        expected = fed(probs, labels, metrics["classes"]).summary()
        # float32 outputs of batches of 5 and of one batch differ in the last bits
        assert _close({k: v for k, v in part.items() if k != "confident_mistakes"}, expected, 1e-6)
        # the purple plums, and only they, are called apples
        purple = [n for n in names if os.path.basename(n).startswith("plum")
                  and int(os.path.basename(n)[4:].split(".")[0]) % 4 == 0]
        purples += len(purple)
        counts = part["confusion"]["counts"]
        assert counts[2][0] == len(purple) and sum(map(sum, counts)) - np.trace(counts) == len(purple)
        mistakes = part["confident_mistakes"]
        assert sorted(m["name"] for m in mistakes) == sorted(purple)
        assert all((m["label"], m["predicted"]) == (2, 0) for m in mistakes)
        assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes), reverse=True)
        assert all(names[m["index"]] == m["name"] for m in mistakes)
        assert (f"mistakes_{split}" in metrics["figures"]) == bool(mistakes)
    assert purples > 0  # the case has mistakes to find


def test_cli_summary_of_three_classes(three_classes, tmp_path):
    from click.testing import CliRunner

    from cli import cli

    run_dir = make_softmax_run(str(tmp_path), three_classes, "soft-1")
    result = CliRunner().invoke(cli, ["evaluate", run_dir, "--split", "test", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[-5] == "3 classes: apple, kiwi, plum"
    assert lines[-4].split() == ["split", "images", "acc", "macroF1", "logloss", "ECE"]
    assert [line.split()[0] for line in lines[-3:-1]] == ["val", "test"]
    assert lines[-1].startswith("no threshold")


def test_a_model_with_the_wrong_number_of_outputs_is_refused(three_classes, tmp_path):
    from evaluate import evaluate_run
    from shards import UserError

    run_dir = make_softmax_run(str(tmp_path), three_classes, "soft-4", classes=4)
    with pytest.raises(UserError, match=r"gives 4 output\(s\) per image, but the shards in .* hold 3 classes "
                                        r"\(apple, kiwi, plum\)"):
        evaluate_run(run_dir, progress=False)


def test_compare_shows_class_names_and_counts(three_classes, tmp_path):
    from evaluate import compare_runs, markdown_table

    run_dir = make_softmax_run(str(tmp_path), three_classes, "soft-1")
    (row,) = compare_runs([run_dir], progress=False)
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert row["classes"] == "apple, kiwi, plum" and row["test_class_counts"] == "4 / 4 / 4"
    assert row["threshold"] is None  # no threshold with three classes
    assert row["val_roc_auc"] == metrics["splits"]["val"]["macro_roc_auc"]
    assert row["test_accuracy"] == metrics["splits"]["test"]["accuracy"]
    assert row["val_macro_f1"] == metrics["splits"]["val"]["macro"]["f1"]
    line = markdown_table([row]).splitlines()[2]
    assert line.endswith(f"| {row['val_macro_f1']:.3f} | apple, kiwi, plum | 4 / 4 / 4 |")


def test_info_shows_the_classes_of_a_run(three_classes, tmp_path):
    import re

    from evaluate import evaluate_run
    from kibble.info import info, info_text

    runs = str(tmp_path / "runs")
    run_dir = make_softmax_run(runs, three_classes, "soft-1")
    accuracy = evaluate_run(run_dir, progress=False)["splits"]["test"]["accuracy"]
    facts = info(three_classes, runs)
    (run,) = facts["runs"]
    assert run["classes"] == ["apple", "kiwi", "plum"] and run["test_accuracy"] == accuracy
    assert run["threshold"] is None
    text = info_text(facts, three_classes)
    assert re.search(rf"^\s+soft-1\s+tiny\s+1/1\s+0\.700\s+{accuracy:.3f}\s+3: apple, kiwi, plum$", text, re.M), text


@pytest.mark.parametrize("batch_size", [1, 7, 64, 300])
def test_mistakes_kept_during_the_pass_are_the_most_confident_of_all(batch_size):
    from evaluate.run import _MulticlassCandidates

    rng = np.random.default_rng(batch_size)
    count = 300
    probs = np.round(rng.dirichlet(np.ones(4), count), 1)  # many ties: the first seen must win them
    labels = rng.integers(0, 4, count)
    images = np.stack([np.arange(count) // 256, np.arange(count) % 256], axis=1).astype(np.uint8)
    candidates = _MulticlassCandidates(keep=16)
    for first in range(0, count, batch_size):
        rows = slice(first, first + batch_size)
        candidates.add(probs[rows], labels[rows], [f"n{i}" for i in range(first, first + batch_size)],
                       images[rows], first)
    assert len(candidates.pool) <= 16
    mistakes, pictures = candidates.worst()
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    expected = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:16].tolist()
    assert len(expected) == 16 and [m["index"] for m in mistakes] == expected
    assert [(m["label"], m["predicted"]) for m in mistakes] == [(labels[i], predicted[i]) for i in expected]
    assert [m["label_probability"] for m in mistakes] == [probs[i, labels[i]] for i in expected]
    assert pictures.tolist() == images[expected].tolist()


def test_tta_with_n_classes_averages_n_probabilities(three_classes, tmp_path):
    # The solid images here are their own mirror, so this checks the N-wide outputs of both passes are
    # averaged row by row (a (n, N) mean, not flattened or refused), not the mirroring itself, which
    # tests/test_evaluate.py covers.
    import keras

    from evaluate import evaluate_run

    run_dir = make_softmax_run(str(tmp_path), three_classes, "soft-1")
    result = evaluate_run(run_dir, splits=("val",), out=str(tmp_path / "o"), progress=False, tta=True)
    model = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    images, labels, _ = read_split(three_classes, "val")
    probs = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 2
    expected = fed(probs.astype(np.float64), labels, ["apple", "kiwi", "plum"]).summary()
    assert result["tta"] == "flip"
    assert result["splits"]["val"]["log_loss"] == pytest.approx(expected["log_loss"], abs=1e-6)
    assert result["splits"]["val"]["confusion"] == expected["confusion"]
