"""Binary classification metrics, accumulated batch by batch (NumPy only).

The positive class is cat (label 1); a score is the model's probability of
cat, and an image is predicted cat when its score is *strictly above* the
threshold ("predict cat above t", as in the tutorial).

`Accumulator` is fed (scores, labels) one batch at a time and keeps:

- co-moments of scores and labels, merged per batch (Chan et al.), so MSE
  and Pearson r are computed over the whole split, not averaged per batch;
- the clipped log loss sum;
- for every threshold of `FINE_GRID` (0.00, 0.01, ..., 1.00) the number of
  cats and of dogs predicted cat: accuracy on the grid comes from these;
- every score (one float64 per image) for ROC AUC, the ROC curve, the
  histograms and the exact confusion matrix at any threshold;
- the reliability bins of `Calibration`, the one home of binning and the
  expected calibration error for both paths (two classes: the probability
  of cat against the share of cats; N classes: the top probability against
  the share of right predictions).

Values that do not exist for the data (Pearson r of constant predictions,
AUC with one class, precision with no image predicted cat) are None, and
`summary()` lists the reason for each under "undefined".
"""
import numpy as np

# Threshold grid on which accuracy is counted and the decision threshold is
# chosen. Integers / 100 so that 0.05, 0.15, ... are exactly the literals.
FINE_GRID = np.arange(101) / 100
# The tutorial's "accuracy at 10 straightforward thresholds": the centres of
# ten equal bins of [0, 1], symmetric about 0.5 (0.0 would call every image a
# cat). Each is a point of FINE_GRID.
COARSE_GRID = np.arange(5, 100, 10) / 100
# Scores are clipped to [EPSILON, 1 - EPSILON] for the log loss (Keras' value).
EPSILON = 1e-7
# Equal-width bins of [0, 1] for the expected calibration error and the
# reliability diagram (torchmetrics' default; scikit-learn's is 5).
CALIBRATION_BINS = 15


class Accumulator:
    """Streaming metrics of one split; call `update` per batch, then `summary`."""

    def __init__(self):
        self.count = 0
        self.cats = 0
        self._mean_s = 0.0
        self._mean_y = 0.0
        self._m2_s = 0.0      # sum of squared deviations of the scores
        self._m2_y = 0.0      # ... of the labels
        self._c_sy = 0.0      # sum of products of deviations
        self._sq_error = 0.0
        self._log_loss = 0.0
        self._min_s = np.inf
        self._max_s = -np.inf
        # cats / dogs with score > FINE_GRID[j], for every j
        self._cats_above = np.zeros(len(FINE_GRID), dtype=np.int64)
        self._dogs_above = np.zeros(len(FINE_GRID), dtype=np.int64)
        self.calibration = Calibration()
        self._scores, self._labels = [], []

    @property
    def dogs(self):
        return self.count - self.cats

    def update(self, scores, labels):
        """Add one batch: `scores` (n,) or (n, 1) floats, `labels` (n,) of 0/1."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = np.asarray(labels).reshape(-1)
        if s.shape != y.shape:
            raise ValueError(f"scores and labels differ in length. Received: {s.shape[0]} scores, "
                             f"{y.shape[0]} labels")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"labels must be 0 (dog) or 1 (cat). Received: {sorted(set(y.tolist()))}")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{int(np.sum(~np.isfinite(s)))} of {s.size} scores are NaN or infinite")
        n = s.size
        if n == 0:
            return
        y = y.astype(np.float64)
        self._merge_moments(s, y)
        self._sq_error += float(np.sum((s - y) ** 2))
        p = np.clip(s, EPSILON, 1 - EPSILON)
        self._log_loss -= float(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)))
        self._min_s = min(self._min_s, float(s.min()))
        self._max_s = max(self._max_s, float(s.max()))
        cat = y == 1
        self._cats_above += _count_above(s[cat])
        self._dogs_above += _count_above(s[~cat])
        self.cats += int(cat.sum())
        self.calibration.update(s, cat)
        self._scores.append(s)
        self._labels.append(y.astype(np.int8))

    def _merge_moments(self, s, y):
        n_b = s.size
        mean_s, mean_y = s.mean(), y.mean()
        ds, dy = s - mean_s, y - mean_y
        n_a, n = self.count, self.count + n_b
        delta_s, delta_y = mean_s - self._mean_s, mean_y - self._mean_y
        weight = n_a * n_b / n
        self._m2_s += float(ds @ ds) + delta_s * delta_s * weight
        self._m2_y += float(dy @ dy) + delta_y * delta_y * weight
        self._c_sy += float(ds @ dy) + delta_s * delta_y * weight
        self._mean_s += delta_s * n_b / n
        self._mean_y += delta_y * n_b / n
        self.count = n

    @property
    def scores(self):
        """Every score seen, in order, float64 (n,)."""
        return np.concatenate(self._scores) if self._scores else np.empty(0)

    @property
    def labels(self):
        """Every label seen, in order, int8 (n,)."""
        return np.concatenate(self._labels) if self._labels else np.empty(0, dtype=np.int8)

    def accuracy_curve(self):
        """Accuracy at every threshold of FINE_GRID, float64 (101,)."""
        correct = self._cats_above + (self.dogs - self._dogs_above)
        return correct / self.count if self.count else np.full(len(FINE_GRID), np.nan)

    def best_threshold(self):
        """The FINE_GRID threshold of highest accuracy; ties go to the one nearest 0.5."""
        if self.count == 0:
            raise ValueError("no examples: cannot choose a threshold")
        correct = self._cats_above + (self.dogs - self._dogs_above)
        tied = np.flatnonzero(correct == correct.max())
        return float(FINE_GRID[tied[np.argmin(np.abs(FINE_GRID[tied] - 0.5))]])

    def summary(self, threshold):
        """Every metric of the split, with the decision metrics at `threshold`.

        Returns a dict of plain Python numbers (see evaluate/README.md); None
        marks an undefined value, whose reason is in result["undefined"].
        """
        if self.count == 0:
            raise ValueError("no examples: nothing to summarise")
        undefined = {}
        n = self.count
        curve = self.accuracy_curve()
        coarse = {f"{t:.2f}": float(curve[_grid_index(t)]) for t in COARSE_GRID}
        best = max(coarse, key=lambda k: (coarse[k], -abs(float(k) - 0.5)))
        scores, labels = self.scores, self.labels
        confusion = confusion_at(scores, labels, threshold)
        result = {
            "count": n,
            "cats": self.cats,
            "dogs": self.dogs,
            "mse": self._sq_error / n,
            "pearson_r": self._pearson(undefined),
            "log_loss": self._log_loss / n,
            "roc_auc": _noting(undefined, "roc_auc", roc_auc(scores, labels)),
            "accuracy_at": coarse,
            "best_accuracy": coarse[best],
            "best_accuracy_threshold": float(best),
            "threshold": float(threshold),
            "accuracy": (confusion["tp"] + confusion["tn"]) / n,
            "ece": self.calibration.ece(),
            "calibration_bins": self.calibration.bins(BINARY_BIN_KEYS),
        }
        for name, (value, reason) in precision_recall_f1(confusion).items():
            result[name] = value
            if value is None:
                undefined[name] = reason
        result["confusion"] = confusion
        result["undefined"] = undefined
        return result

    def _pearson(self, undefined):
        if self.cats in (0, self.count):
            undefined["pearson_r"] = "only one class in this split"
            return None
        if self._min_s == self._max_s:
            undefined["pearson_r"] = f"the model gives every image the same score ({self._min_s:.6g})"
            return None
        r = self._c_sy / np.sqrt(self._m2_s * self._m2_y)
        return float(np.clip(r, -1.0, 1.0))


def _count_above(scores):
    """For every FINE_GRID threshold t, how many scores are > t; int64 (101,)."""
    # below[k]: scores with exactly k thresholds strictly under them
    below = np.bincount(np.searchsorted(FINE_GRID, scores, side="left"), minlength=len(FINE_GRID) + 1)
    return np.cumsum(below[::-1])[::-1][1:]


def _grid_index(threshold):
    return int(round(threshold * 100))


def _noting(undefined, name, pair):
    value, reason = pair
    if value is None:
        undefined[name] = reason
    return value


def confusion_at(scores, labels, threshold):
    """Counts {"tp", "fp", "tn", "fn"} when cat is predicted for score > threshold."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    cat_predicted = scores > threshold
    cat = labels == 1
    return {
        "tp": int(np.sum(cat_predicted & cat)),
        "fp": int(np.sum(cat_predicted & ~cat)),
        "tn": int(np.sum(~cat_predicted & ~cat)),
        "fn": int(np.sum(~cat_predicted & cat)),
    }


def precision_recall_f1(confusion):
    """{"precision" | "recall" | "f1": (value or None, reason or None)} of cats."""
    tp, fp, fn = confusion["tp"], confusion["fp"], confusion["fn"]
    result = {}
    result["precision"] = ((tp / (tp + fp), None) if tp + fp else
                           (None, "no image is predicted cat at this threshold"))
    result["recall"] = (tp / (tp + fn), None) if tp + fn else (None, "no cat in this split")
    # 2tp / (2tp + fp + fn): equals 2PR / (P + R), and is 0 rather than
    # undefined when precision is undefined but there are cats to find.
    result["f1"] = ((2 * tp / (2 * tp + fp + fn), None) if tp + fp + fn else
                    (None, "no cat in this split and none predicted"))
    return result


def roc_auc(scores, labels):
    """(area under the ROC curve, None), or (None, reason) with one class.

    The Mann-Whitney statistic: the chance that a random cat scores above a
    random dog, ties counting one half.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    cats = int(np.sum(labels == 1))
    dogs = labels.size - cats
    if cats == 0 or dogs == 0:
        return None, f"only one class in this split ({cats} cats, {dogs} dogs)"
    ranks = _average_ranks(scores)
    auc = (ranks[labels == 1].sum() - cats * (cats + 1) / 2) / (cats * dogs)
    return float(auc), None


def _average_ranks(values):
    """1-based ranks, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2
    return mean_rank[inverse]


def roc_curve(scores, labels):
    """(false positive rates, true positive rates) from (0, 0) to (1, 1), or None with one class."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    cats = int(np.sum(labels == 1))
    dogs = labels.size - cats
    if cats == 0 or dogs == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order] == 1
    # one point per distinct score: the last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return np.r_[0.0, fps / dogs], np.r_[0.0, tps / cats]


# ---- calibration (both paths) ------------------------------------------------------------------
# Names of a bin's mean probability and of the share of its images that came true, in
# metrics.json. Two classes: the probability of class 1 and the share of class 1 (a reliability
# diagram as scikit-learn's calibration_curve and torchmetrics' binary ECE draw it); N classes:
# the top probability ("confidence") and the share of right predictions ("accuracy").
BINARY_BIN_KEYS = ("probability", "frequency")
MULTICLASS_BIN_KEYS = ("confidence", "accuracy")


class Calibration:
    """Reliability bins, streamed: per bin of a predicted probability, the images, their summed
    probability and how many of them came true. The one home of binning and of the expected
    calibration error; each accumulator says what its probability and its outcome are."""

    def __init__(self, bins=CALIBRATION_BINS):
        self.size = bins
        self.edges = np.linspace(0, 1, bins + 1)
        self._count = np.zeros(bins, dtype=np.int64)
        self._probability = np.zeros(bins)
        self._true = np.zeros(bins, dtype=np.int64)

    def update(self, probability, came_true):
        """Add one batch: `probability` (n,) in [0, 1], `came_true` (n,) bools (the event it is the probability of)."""
        probability = np.asarray(probability, dtype=np.float64).reshape(-1)
        which = self.bin_of(probability)
        self._count += np.bincount(which, minlength=self.size)
        self._probability += np.bincount(which, weights=probability, minlength=self.size)
        self._true += np.bincount(which, weights=np.asarray(came_true, dtype=bool).reshape(-1),
                                  minlength=self.size).astype(np.int64)

    def bin_of(self, probability):
        """The bin of each probability: (edges[i], edges[i+1]] is bin i, 0 falls in bin 0, anything above 1
        in the last (scikit-learn's calibration_curve bins exactly so)."""
        return np.searchsorted(self.edges[1:-1], probability, side="left")

    def ece(self):
        """Sum over bins of (images in it / images) x |share come true - mean probability|; None with no image."""
        total = int(self._count.sum())
        # per bin, count x |true / count - probability / count| = |true - summed probability|
        return float(np.abs(self._true - self._probability).sum() / total) if total else None

    def bins(self, keys):
        """[{"lower", "upper", "count", keys[0]: mean probability, keys[1]: share come true}] per bin,
        the last two None for an empty bin."""
        mean_key, true_key = keys
        result = []
        for i in range(self.size):
            n = int(self._count[i])
            result.append({"lower": float(self.edges[i]), "upper": float(self.edges[i + 1]), "count": n,
                           mean_key: float(self._probability[i] / n) if n else None,
                           true_key: float(self._true[i] / n) if n else None})
        return result


# ---- more than two classes ---------------------------------------------------------------------
# top-k accuracies given, each only when there are more than k classes.
TOP_K = (3, 5)


class MulticlassAccumulator:
    """Streaming metrics of one split of N > 2 classes; `update` per batch, then `summary`.

    A prediction is the class of highest probability (the first on ties, as
    np.argmax); there is no threshold. Counted per batch: the N x N
    confusion matrix, top-k hits, the clipped log loss, and the calibration
    bins of the top probability against right predictions. Kept: every
    probability (N float64 per image), which the one-vs-rest ROC AUC of each
    class needs.
    """

    def __init__(self, classes):
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        if self.num_classes < 2:
            raise ValueError(f"need at least two classes. Received: classes={self.classes!r}")
        self.count = 0
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._top_k_hits = {k: 0 for k in TOP_K if self.num_classes > k}
        self._log_loss = 0.0
        self.calibration = Calibration()
        self._probabilities, self._labels = [], []

    def update(self, probabilities, labels):
        """Add one batch: `probabilities` (n, N) floats, `labels` (n,) class indices 0..N-1."""
        p = np.asarray(probabilities, dtype=np.float64)
        y = np.asarray(labels).reshape(-1)
        if p.ndim != 2 or p.shape[1] != self.num_classes:
            raise ValueError(f"probabilities must be of shape (n, {self.num_classes}). Received: shape {p.shape}")
        if p.shape[0] != y.shape[0]:
            raise ValueError(f"probabilities and labels differ in length. Received: {p.shape[0]} rows, "
                             f"{y.shape[0]} labels")
        if not np.all((y >= 0) & (y < self.num_classes)):
            bad = sorted(set(y[(y < 0) | (y >= self.num_classes)].tolist()))
            raise ValueError(f"labels must be class indices 0..{self.num_classes - 1}. Received: {bad}")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"{int(np.sum(~np.all(np.isfinite(p), axis=1)))} of {len(p)} rows of "
                             "probabilities hold NaN or infinite values")
        if len(y) == 0:
            return
        y = y.astype(np.int64)
        rows = np.arange(len(y))
        predicted = np.argmax(p, axis=1)
        np.add.at(self.confusion, (y, predicted), 1)
        true_p = p[rows, y]
        # rank of the true class: how many classes score strictly above it
        above = np.sum(p > true_p[:, None], axis=1)
        for k in self._top_k_hits:
            self._top_k_hits[k] += int(np.sum(above < k))
        self._log_loss -= float(np.sum(np.log(np.clip(true_p, EPSILON, 1.0))))
        self.calibration.update(p[rows, predicted], predicted == y)
        self.count += len(y)
        self._probabilities.append(p)
        self._labels.append(y.astype(np.int16))

    @property
    def probabilities(self):
        """Every row of probabilities seen, in order, float64 (n, N)."""
        return np.concatenate(self._probabilities) if self._probabilities else np.empty((0, self.num_classes))

    @property
    def labels(self):
        """Every label seen, in order, int16 (n,)."""
        return np.concatenate(self._labels) if self._labels else np.empty(0, dtype=np.int16)

    def summary(self):
        """Every metric of the split (see evaluate/README.md); None marks an undefined value, its
        reason in result["undefined"]."""
        if self.count == 0:
            raise ValueError("no examples: nothing to summarise")
        n, undefined = self.count, {}
        confusion = self.confusion
        support = confusion.sum(axis=1)
        predicted = confusion.sum(axis=0)
        tp = np.diag(confusion)
        per_class = []
        probabilities, labels = self.probabilities, self.labels
        for k, name in enumerate(self.classes):
            entry = {"class": name, "support": int(support[k]), "predicted": int(predicted[k])}
            for metric, (value, reason) in _class_scores(int(tp[k]), int(predicted[k]), int(support[k]), name):
                entry[metric] = value
                if value is None:
                    undefined[f"{metric}[{name}]"] = reason
            auc, reason = roc_auc(probabilities[:, k], (labels == k).astype(np.int8))
            entry["roc_auc"] = auc
            if auc is None:
                undefined[f"roc_auc[{name}]"] = (f"{name} against the rest needs images of both "
                                                 f"({int(support[k])} {name}, {n - int(support[k])} others)")
            per_class.append(entry)
        result = {
            "count": n,
            "class_counts": [int(c) for c in support],
            "accuracy": float(tp.sum() / n),
        }
        for k, hits in self._top_k_hits.items():
            result[f"top_{k}_accuracy"] = hits / n
        result["per_class"] = per_class
        for average in ("macro", "weighted"):
            result[average] = {metric: _average(per_class, metric, average, undefined)
                               for metric in ("precision", "recall", "f1")}
        result["macro_roc_auc"] = _average(per_class, "roc_auc", "macro", undefined)
        result["log_loss"] = self._log_loss / n
        result["ece"] = self.calibration.ece()
        result["calibration_bins"] = self.calibration.bins(MULTICLASS_BIN_KEYS)
        rows = confusion.astype(np.float64)
        result["confusion"] = {
            "counts": confusion.tolist(),
            "normalized": [[float(v) for v in row / s] if s else None for row, s in zip(rows, support)],
        }
        result["undefined"] = undefined
        return result


def _class_scores(tp, predicted, support, name):
    """[(metric, (value or None, reason or None))] for precision, recall, F1 of one class against the rest."""
    fp, fn = predicted - tp, support - tp
    return [
        ("precision", (tp / predicted, None) if predicted else (None, f"no image is predicted {name}")),
        ("recall", (tp / support, None) if support else (None, f"no {name} in this split")),
        ("f1", (2 * tp / (2 * tp + fp + fn), None) if tp + fp + fn else
         (None, f"no {name} in this split and none predicted")),
    ]


def _average(per_class, metric, average, undefined):
    """Macro (plain mean) or weighted (by support) mean of `metric` over the classes where it is defined.

    The classes where it is undefined are left out (scikit-learn's
    zero_division=np.nan); with none defined the average is None too.
    """
    rows = [c for c in per_class if c[metric] is not None]
    weights = np.array([1.0 if average == "macro" else c["support"] for c in rows])
    name = f"{average}_{metric}" if metric == "roc_auc" else f"{average}.{metric}"
    if not rows or weights.sum() == 0:
        undefined[name] = f"{metric} is undefined for every class" if not rows else "no image in this split"
        return None
    return float(np.dot(weights, [c[metric] for c in rows]) / weights.sum())
