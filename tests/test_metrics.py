import json
import math

import numpy as np
import pytest

from evaluate.metrics import (
    CALIBRATION_BINS,
    COARSE_GRID,
    EPSILON,
    FINE_GRID,
    Accumulator,
    MulticlassAccumulator,
    confusion_at,
    roc_auc,
    roc_curve,
)


def fed(scores, labels, batch=None):
    acc = Accumulator()
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    step = batch or max(len(scores), 1)
    for start in range(0, len(scores), step):
        acc.update(scores[start:start + step], labels[start:start + step])
    return acc


# A case small enough to work out on paper:
#   cats score 0.9, 0.8, 0.3; dogs score 0.6, 0.2, 0.1.
KNOWN_SCORES = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1]
KNOWN_LABELS = [1, 1, 1, 0, 0, 0]


def test_known_case_by_hand():
    acc = fed(KNOWN_SCORES, KNOWN_LABELS, batch=4)
    result = acc.summary(0.5)
    # squared errors .01 .04 .49 .36 .04 .01
    assert result["mse"] == pytest.approx(0.95 / 6)
    # mean score 2.9/6; sum (s-ms)(y-my) = 0.5 * (2.0 - 0.9) = 0.55;
    # sum (y-my)^2 = 1.5; sum (s-ms)^2 = 1.95 - 2.9^2/6 = 3.29/6
    assert result["pearson_r"] == pytest.approx(0.55 / math.sqrt(1.5 * 3.29 / 6))
    # cat above dog in 3 + 3 + 2 of the 9 pairs
    assert result["roc_auc"] == pytest.approx(8 / 9)
    assert result["log_loss"] == pytest.approx(
        -(math.log(0.9) + math.log(0.8) + math.log(0.3) + math.log(0.4) + math.log(0.8) + math.log(0.9)) / 6)
    # above 0.5: 0.9, 0.8 (cats) and 0.6 (a dog)
    assert result["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["undefined"] == {}
    assert (result["count"], result["cats"], result["dogs"]) == (6, 3, 3)


def test_known_case_coarse_accuracy_and_threshold_choice():
    acc = fed(KNOWN_SCORES, KNOWN_LABELS, batch=2)
    result = acc.summary(0.5)
    expected = {"0.05": 3, "0.15": 4, "0.25": 5, "0.35": 4, "0.45": 4,
                "0.55": 4, "0.65": 5, "0.75": 5, "0.85": 4, "0.95": 3}
    assert list(result["accuracy_at"]) == list(expected)
    for key, correct in expected.items():
        assert result["accuracy_at"][key] == pytest.approx(correct / 6), key
    # 5/6 at 0.25, 0.65 and 0.75: the tie goes to the one nearest 0.5
    assert result["best_accuracy"] == pytest.approx(5 / 6)
    assert result["best_accuracy_threshold"] == 0.65
    # 5/6 on the fine grid for t in 0.20..0.29 and 0.60..0.79 (0.6 is not
    # above 0.60); the nearest to 0.5 is 0.60
    assert acc.best_threshold() == 0.6
    assert acc.summary(0.6)["accuracy"] == pytest.approx(5 / 6)


def test_calibration_by_hand_is_the_probability_of_cat_against_the_share_of_cats():
    # bins of 1/15: 0.9 in bin 13 (two cats, a dog), 0.1 in bin 1 (two dogs), 0.5 in bin 7 (a cat)
    scores, labels = [0.9, 0.9, 0.9, 0.1, 0.1, 0.5], [1, 1, 0, 0, 0, 1]
    result = fed(scores, labels, batch=4).summary(0.5)
    # per bin |cats - summed probability|: |2 - 2.7| + |0 - 0.2| + |1 - 0.5|, over 6 images. (The top-label
    # reading, max(p, 1 - p) against right at 0.5, would give (|4 - 4.5| + |0 - 0.5|) / 6 = 1/6 here.)
    assert result["ece"] == pytest.approx(1.4 / 6)
    bins = result["calibration_bins"]
    assert len(bins) == CALIBRATION_BINS and [b["count"] for b in bins] == [0, 2] + [0] * 5 + [1] + [0] * 5 + [3, 0]
    assert bins[13] == pytest.approx({"lower": 13 / 15, "upper": 14 / 15, "count": 3, "probability": 0.9,
                                      "frequency": 2 / 3})
    assert bins[0] == {"lower": 0.0, "upper": pytest.approx(1 / 15), "count": 0, "probability": None,
                       "frequency": None}
    json.dumps(result, allow_nan=False)


def test_a_perfectly_calibrated_split_has_no_calibration_error():
    # in each bin the share of cats is the mean probability: 1 of 4 at 0.25, 3 of 4 at 0.75
    result = fed([0.25] * 4 + [0.75] * 4, [1, 0, 0, 0, 1, 1, 1, 0]).summary(0.5)
    assert result["ece"] == pytest.approx(0.0, abs=1e-15)
    assert fed([1.0, 0.0], [0, 1]).summary(0.5)["ece"] == pytest.approx(1.0)  # certain and wrong: the worst


def test_both_paths_bin_alike():
    # One home for binning: a two-class split and an N-class split whose top probabilities are the same
    # numbers, right where the two-class images are cats, get the same bins and the same ECE.
    rng = np.random.default_rng(3)
    p = rng.uniform(0.34, 1.0, 300)
    right = rng.random(300) < p
    binary = fed(p, right.astype(int), batch=7).summary(0.5)
    rest = (1 - p) / 2
    probs = np.stack([p, rest, rest], axis=1)
    labels = np.where(right, 0, 1)
    many = MulticlassAccumulator(["a", "b", "c"])
    for start in range(0, 300, 11):
        many.update(probs[start:start + 11], labels[start:start + 11])
    multiclass = many.summary()
    assert binary["ece"] == pytest.approx(multiclass["ece"], abs=1e-12)
    pairs = list(zip(binary["calibration_bins"], multiclass["calibration_bins"]))
    assert [b["count"] for b, _ in pairs] == [m["count"] for _, m in pairs]
    assert [b["frequency"] for b, _ in pairs] == [m["accuracy"] for _, m in pairs]


def test_grids():
    assert COARSE_GRID.tolist() == [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
    assert len(FINE_GRID) == 101 and FINE_GRID[0] == 0.0 and FINE_GRID[-1] == 1.0
    assert set(COARSE_GRID.tolist()) <= set(FINE_GRID.tolist())


def test_perfect_classifier():
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    result = fed(labels.astype(float), labels, batch=3).summary(0.5)
    assert result["mse"] == 0.0
    assert result["pearson_r"] == pytest.approx(1.0)
    assert result["roc_auc"] == 1.0
    assert result["log_loss"] == pytest.approx(-math.log(1 - EPSILON))
    assert set(result["accuracy_at"].values()) == {1.0} and result["best_accuracy"] == 1.0
    assert (result["accuracy"], result["precision"], result["recall"], result["f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert result["confusion"] == {"tp": 4, "fp": 0, "tn": 4, "fn": 0}


def test_inverted_classifier():
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    result = fed(1.0 - labels, labels, batch=5).summary(0.5)
    assert result["mse"] == 1.0
    assert result["pearson_r"] == pytest.approx(-1.0)
    assert result["roc_auc"] == 0.0
    assert result["log_loss"] == pytest.approx(-math.log(EPSILON))  # clipped, not infinite
    assert set(result["accuracy_at"].values()) == {0.0}
    assert result["confusion"] == {"tp": 0, "fp": 4, "tn": 0, "fn": 4}
    assert (result["precision"], result["recall"], result["f1"]) == (0.0, 0.0, 0.0)


def test_constant_predictions_are_undefined_not_nan():
    labels = np.array([1, 0, 0, 1, 0])
    result = fed(np.full(5, 0.5), labels, batch=2).summary(0.5)
    assert result["mse"] == pytest.approx(0.25)
    assert result["log_loss"] == pytest.approx(math.log(2))
    assert result["roc_auc"] == 0.5  # every pair tied
    assert result["pearson_r"] is None and "same score" in result["undefined"]["pearson_r"]
    # nothing is above 0.5: no image predicted cat
    assert result["precision"] is None and "no image is predicted cat" in result["undefined"]["precision"]
    assert result["recall"] == 0.0 and result["f1"] == 0.0
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert set(result["undefined"]) == {"pearson_r", "precision"}
    json.dumps(result, allow_nan=False)  # no NaN anywhere


def test_one_class_only():
    result = fed([0.2, 0.9, 0.7], [1, 1, 1]).summary(0.5)
    assert result["pearson_r"] is None and "one class" in result["undefined"]["pearson_r"]
    assert result["roc_auc"] is None and "one class" in result["undefined"]["roc_auc"]
    assert result["recall"] == pytest.approx(2 / 3) and result["precision"] == 1.0
    json.dumps(result, allow_nan=False)
    dogs = fed([0.2, 0.1], [0, 0]).summary(0.5)
    assert dogs["recall"] is None and "no cat" in dogs["undefined"]["recall"]
    assert dogs["f1"] is None and dogs["accuracy"] == 1.0
    json.dumps(dogs, allow_nan=False)


def test_streamed_pearson_and_mse_equal_whole_split():
    rng = np.random.default_rng(0)
    scores = rng.random(1000) * 0.01 + 0.7  # a narrow band: hard for naive sums
    labels = (rng.random(1000) < (scores - 0.7) * 100).astype(int)
    whole_r = np.corrcoef(scores, labels)[0, 1]
    whole_mse = np.mean((scores - labels) ** 2)
    for batch in (1, 7, 256, 1000):
        result = fed(scores, labels, batch=batch).summary(0.5)
        assert result["pearson_r"] == pytest.approx(whole_r, abs=1e-12), batch
        assert result["mse"] == pytest.approx(whole_mse, abs=1e-12), batch
    # an empty batch changes nothing
    acc = fed(scores, labels, batch=100)
    acc.update(np.empty(0), np.empty(0, dtype=int))
    assert acc.count == 1000 and acc.summary(0.5)["pearson_r"] == pytest.approx(whole_r, abs=1e-12)


def test_accuracy_curve_counts_match_brute_force():
    rng = np.random.default_rng(1)
    # include scores that sit exactly on grid points and at 0 and 1
    scores = np.r_[rng.random(300), FINE_GRID[::7], 0.0, 1.0]
    labels = rng.integers(0, 2, scores.size)
    acc = fed(scores, labels, batch=64)
    expected = [np.mean((scores > t) == (labels == 1)) for t in FINE_GRID]
    assert np.allclose(acc.accuracy_curve(), expected)
    assert np.array_equal(acc.scores, scores) and np.array_equal(acc.labels, labels)


def test_auc_and_roc_curve_agree_with_ties():
    rng = np.random.default_rng(2)
    scores = np.round(rng.random(500), 1)  # many ties
    labels = (rng.random(500) < scores).astype(int)
    auc, reason = roc_auc(scores, labels)
    cats, dogs = scores[labels == 1], scores[labels == 0]
    pairs = (cats[:, None] > dogs[None, :]).sum() + 0.5 * (cats[:, None] == dogs[None, :]).sum()
    assert reason is None and auc == pytest.approx(pairs / (cats.size * dogs.size))
    fpr, tpr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc)
    assert roc_curve([0.1, 0.2], [1, 1]) is None


def test_confusion_at_is_strictly_above():
    assert confusion_at([0.5, 0.51, 0.5], [1, 1, 0], 0.5) == {"tp": 1, "fp": 0, "tn": 1, "fn": 1}


def test_bad_batches_are_rejected():
    acc = Accumulator()
    with pytest.raises(ValueError, match="NaN"):
        acc.update([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match=r"0 \(dog\) or 1 \(cat\).*-1"):
        acc.update([0.1, 0.2], [0, -1])
    with pytest.raises(ValueError, match="differ in length"):
        acc.update([0.1, 0.2], [0])
    assert acc.count == 0
    with pytest.raises(ValueError, match="no examples"):
        acc.summary(0.5)


def test_scores_of_shape_n_by_1_are_accepted():
    acc = Accumulator()
    acc.update(np.array([[0.9], [0.1]], dtype=np.float32), np.array([1, 0], dtype=np.int8))
    assert acc.summary(0.5)["accuracy"] == 1.0


# ---- the hand-written metrics against scikit-learn and SciPy (test extra only: they are too heavy
# as runtime dependencies). Each data set is one line; every figure of the summary is compared.

def _random(seed, n=400, decimals=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.25), 0, 1)  # informative but overlapping
    return (np.round(scores, decimals) if decimals is not None else scores), labels


REFERENCE_CASES = [
    ("random", *_random(10)),
    ("random-many-ties", *_random(11, decimals=1)),
    ("random-small-batches-of-3", *_random(12, n=31)),
    ("on-grid-points-and-ends", np.r_[FINE_GRID[::5], 0.0, 1.0, 0.5, 0.5], np.r_[np.arange(21) % 2, 1, 0, 1, 0]),
    ("all-equal-scores", np.full(9, 0.5), np.array([1, 0, 0, 1, 1, 0, 0, 0, 1])),
    ("all-equal-scores-above", np.full(6, 0.8), np.array([1, 0, 0, 1, 0, 0])),
    ("only-cats", np.array([0.2, 0.9, 0.7, 0.51]), np.ones(4, dtype=int)),
    ("only-dogs", np.array([0.2, 0.1, 0.6]), np.zeros(3, dtype=int)),
    ("perfect-at-0-and-1", np.array([1.0, 0.0, 1.0, 0.0]), np.array([1, 0, 1, 0])),
    ("inverted", np.array([0.1, 0.9, 0.2, 0.8, 0.3]), np.array([1, 0, 1, 0, 1])),
    ("two-images", np.array([0.4, 0.6]), np.array([1, 0])),
]


def _reference(call):
    """What a scikit-learn / SciPy function returns, None when it calls the value undefined (NaN,
    a warning, or a ValueError in older releases)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = call()
        except ValueError:
            return None
    value = float(value)
    return None if math.isnan(value) else value


def _same(ours, theirs, name):
    if theirs is None:
        assert ours is None, f"{name}: ours {ours}, reference undefined"
    else:
        assert ours == pytest.approx(theirs, abs=1e-12), name


@pytest.mark.parametrize("scores, labels", [case[1:] for case in REFERENCE_CASES],
                         ids=[case[0] for case in REFERENCE_CASES])
def test_every_figure_matches_scikit_learn_and_scipy(scores, labels):
    metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    acc = fed(scores, labels, batch=3)
    for threshold in (0.5, float(np.median(scores))):  # the median sits on a score: "strictly above" matters
        result = acc.summary(threshold)
        predicted = (scores > threshold).astype(int)
        tn, fp, fn, tp = metrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
        assert result["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
        _same(result["accuracy"], metrics.accuracy_score(labels, predicted), "accuracy")
        for name, score in (("precision", metrics.precision_score), ("recall", metrics.recall_score),
                            ("f1", metrics.f1_score)):
            _same(result[name], _reference(lambda: score(labels, predicted, zero_division=np.nan)), name)

    _same(result["mse"], metrics.mean_squared_error(labels, scores), "mse")
    clipped = np.clip(scores, EPSILON, 1 - EPSILON)  # Keras' clipping, which ours applies by design
    _same(result["log_loss"], metrics.log_loss(labels, clipped, labels=[0, 1]), "log_loss")
    _same(result["roc_auc"], _reference(lambda: metrics.roc_auc_score(labels, scores)), "roc_auc")
    pearson = _reference(lambda: stats.pearsonr(scores, labels)[0])
    _same(result["pearson_r"], pearson, "pearson_r")
    if pearson is not None:
        _same(result["pearson_r"], np.corrcoef(scores, labels)[0, 1], "pearson_r (numpy)")

    curve = roc_curve(scores, labels)
    if result["roc_auc"] is None:
        assert curve is None
    else:
        fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
        assert np.allclose(curve[0], fpr, rtol=0, atol=1e-12) and np.allclose(curve[1], tpr, rtol=0, atol=1e-12)
    # calibration: scikit-learn's reliability curve (probability of the positive class against its share)
    calibration = pytest.importorskip("sklearn.calibration")
    share, mean = calibration.calibration_curve(labels, scores, n_bins=CALIBRATION_BINS, pos_label=1)
    filled = [b for b in result["calibration_bins"] if b["count"]]
    assert sum(b["count"] for b in filled) == len(scores)
    assert np.allclose([b["probability"] for b in filled], mean, rtol=0, atol=1e-12)
    assert np.allclose([b["frequency"] for b in filled], share, rtol=0, atol=1e-12)
    counts = np.array([b["count"] for b in filled])
    assert result["ece"] == pytest.approx(float(np.sum(counts / len(scores) * np.abs(share - mean))), abs=1e-12)

    expected_curve = [metrics.accuracy_score(labels, (scores > t).astype(int)) for t in FINE_GRID]
    assert np.allclose(acc.accuracy_curve(), expected_curve, rtol=0, atol=1e-12)
    assert result["accuracy_at"] == pytest.approx(
        {f"{t:.2f}": metrics.accuracy_score(labels, (scores > t).astype(int)) for t in COARSE_GRID}, abs=1e-12)
