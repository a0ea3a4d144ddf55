"""Pictures (PNG, matplotlib's Agg renderer) and report.md of one evaluation.

Figures are drawn on bare `matplotlib.figure.Figure` objects with an Agg
canvas: no pyplot, no global state, no display needed.
"""
import os

import numpy as np

from evaluate.metrics import (BINARY_BIN_KEYS, CALIBRATION_BINS, COARSE_GRID, FINE_GRID, MULTICLASS_BIN_KEYS,
                              roc_curve)
from shards.fsio import write_text_atomic

FIGURES_DIR = "figures"
REPORT_NAME = "report.md"
COLOURS = {"train": "tab:green", "val": "tab:blue", "test": "tab:orange", "outside": "tab:purple"}
# Section titles of report.md; each split's mistakes get "Most confident mistakes (<split>)".
TITLES = {"roc": "ROC curve", "accuracy_vs_threshold": "Accuracy vs threshold",
          "score_histograms": "Scores by true class", "confusion": "Confusion matrices",
          "training_curves": "Training curves (history.csv)", "reliability": "Reliability diagram",
          "confusion_normalized": "Confusion matrices, each row divided by its class's images"}


def write_report(out, metrics, accumulators, history, mistake_images):
    """Draw every figure into out/figures and write out/report.md.

    `metrics` is the metrics.json document (without "figures"), `accumulators`
    {split: Accumulator}, `history` the rows of history.csv, and
    `mistake_images` {split: uint8 images of its "confident_mistakes", in order}.
    Returns {figure name: path relative to `out`}.
    """
    os.makedirs(os.path.join(out, FIGURES_DIR), exist_ok=True)
    threshold = metrics["threshold"]["value"]
    figures = {}

    def save(name, fig):
        relative = f"{FIGURES_DIR}/{name}.png"
        fig.savefig(os.path.join(out, relative), dpi=100)
        figures[name] = relative

    if "classes" in metrics:  # more than two classes
        return _write_multiclass_report(out, metrics, history, mistake_images, figures, save)
    save("roc", _roc_figure(accumulators))
    save("accuracy_vs_threshold", _accuracy_figure(accumulators, threshold))
    save("score_histograms", _histogram_figure(accumulators, threshold))
    save("confusion", _confusion_figure(metrics["splits"]))
    save("reliability", _reliability_figure(metrics["splits"], BINARY_BIN_KEYS, "probability of cat (mean of its bin)",
                                            "share of cats in the bin"))
    if history:
        save("training_curves", _training_figure(history))
    for split, result in metrics["splits"].items():
        mistakes = result["confident_mistakes"]
        if mistakes:
            save(f"mistakes_{split}", _mistakes_figure(split, mistakes, mistake_images[split], _binary_caption))
    _write_markdown(os.path.join(out, REPORT_NAME), metrics, figures, history)
    return figures


def new_figure(width, height, ncols=1, nrows=1):
    """A Figure on an Agg canvas and its axes, flattened row by row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def _roc_figure(accumulators):
    fig, (ax,) = new_figure(4.5, 4.5)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", label="chance")
    for split, acc in accumulators.items():
        curve = roc_curve(acc.scores, acc.labels)
        if curve is not None:
            auc = np.trapezoid(curve[1], curve[0])
            ax.plot(curve[0], curve[1], color=COLOURS[split], label=f"{split} (AUC {auc:.3f})")
    ax.set(xlabel="false positive rate (dogs called cat)", ylabel="true positive rate (cats found)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC curve")
    ax.legend(loc="lower right")
    return fig


def _accuracy_figure(accumulators, threshold):
    fig, (ax,) = new_figure(6, 4)
    for split, acc in accumulators.items():
        curve = acc.accuracy_curve()
        ax.plot(FINE_GRID, curve, color=COLOURS[split], label=split)
        coarse = curve[np.round(COARSE_GRID * 100).astype(int)]
        ax.plot(COARSE_GRID, coarse, "o", color=COLOURS[split], markersize=4)
    ax.axvline(threshold, color="k", linestyle=":", label=f"threshold {threshold:.2f} (from val)")
    ax.set(xlabel="threshold (cat when score > threshold)", ylabel="accuracy", xlim=(0, 1),
           title="Accuracy vs threshold (dots: the 10 coarse thresholds)")
    ax.legend()
    return fig


def _histogram_figure(accumulators, threshold):
    fig, axes = new_figure(4 * len(accumulators), 3.5, ncols=len(accumulators))
    bins = np.linspace(0, 1, 41)
    for ax, (split, acc) in zip(axes, accumulators.items()):
        scores, labels = np.clip(acc.scores, 0, 1), acc.labels
        ax.hist(scores[labels == 0], bins=bins, alpha=0.6, color="tab:blue", label=f"dogs ({acc.dogs})")
        ax.hist(scores[labels == 1], bins=bins, alpha=0.6, color="tab:red", label=f"cats ({acc.cats})")
        ax.axvline(threshold, color="k", linestyle=":")
        ax.set(xlabel="score (probability of cat)", ylabel="images", title=f"{split}: scores by class")
        ax.legend()
    return fig


def _confusion_figure(results):
    fig, axes = new_figure(3.6 * len(results), 3.4, ncols=len(results))
    for ax, (split, result) in zip(axes, results.items()):
        c = result["confusion"]
        matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, matrix.max()))
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > matrix.max() / 2 else "black")
        ax.set_xticks([0, 1], ["dog", "cat"])
        ax.set_yticks([0, 1], ["dog", "cat"])
        ax.set(xlabel="predicted", ylabel="true", title=f"{split} at threshold {result['threshold']:.2f}")
    return fig


def _reliability_figure(results, keys, xlabel, ylabel):
    """Each split's non-empty calibration bins: mean probability (`keys[0]`) against what came true (`keys[1]`)."""
    fig, (ax,) = new_figure(4.5, 4.5)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", label="perfectly calibrated")
    mean_key, true_key = keys
    for split, result in results.items():
        bins = [b for b in result["calibration_bins"] if b["count"]]
        ax.plot([b[mean_key] for b in bins], [b[true_key] for b in bins], "o-", color=COLOURS[split],
                label=f"{split} (ECE {result['ece']:.3f})")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01),
           title=f"Reliability ({CALIBRATION_BINS} equal bins)")
    ax.legend(loc="upper left")
    return fig


def _training_figure(history):
    from matplotlib.ticker import MaxNLocator

    fig, axes = new_figure(9, 3.5, ncols=2)
    epochs = [row["epoch"] for row in history]
    for ax, key in zip(axes, ("loss", "accuracy")):
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            values = [row.get(name, np.nan) for row in history]
            ax.plot(epochs, values, style, marker="o", markersize=3, label=name)
        ax.set(xlabel="epoch", ylabel=key, title=f"training {key}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    return fig


def _mistakes_figure(split, mistakes, images, caption, title_room=0.6):
    """A grid of the mistakes' images, each titled by `caption(mistake)`; `title_room`: inches per row of titles."""
    cols = min(4, len(mistakes))
    rows = -(-len(mistakes) // cols)
    height, width = images.shape[1:3]
    panel = 2.4
    # at least 4.5 inches wide so that the title fits over a single image
    fig, axes = new_figure(max(panel * cols, 4.5), panel * rows * height / width + title_room * rows + 0.4,
                        ncols=cols, nrows=rows)
    for ax in axes:
        ax.axis("off")
    for ax, mistake, image in zip(axes, mistakes, images):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption(mistake), fontsize=8)
    fig.suptitle(f"{split}: most confident mistakes")
    return fig


def _binary_caption(mistake):
    truth = "cat" if mistake["label"] == 1 else "dog"
    return f"{mistake['name']}\ntrue {truth}, score {mistake['score']:.3f}"


def _fmt(value, digits=4):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _write_markdown(path, metrics, figures, history):
    results = metrics["splits"]
    threshold = metrics["threshold"]["value"]
    lines = (_summary_lines(metrics, history)
             + ["", "## Metrics", ""] + _metrics_table(results, threshold) + _undefined_lines(results)
             + ["", "### Accuracy at the 10 coarse thresholds", ""] + _coarse_table(results)
             + _check_labels_lines(results, _binary_guess(threshold))
             + ["", "## Pictures", ""] + _picture_lines(figures)
             + _missing_picture_lines(figures, results, threshold))
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")


# Rows of the "Check these labels" list: a short list a person reads through.
CHECK_LABELS_SHOWN = 10
CHECK_LABELS_SPLIT = "val"


def _check_labels_lines(results, guess):
    """The "Check these labels" section: validation's most confident mistakes, as a Markdown table.

    A model that is very sure and wrong is often right about a wrong label
    (the kind of error ingest's near-duplicate conflicts catch only when a
    copy exists). `guess(mistake)` gives (given label, predicted class,
    confidence in it). Validation, not test: relabelling test images after
    looking at the model's answers would bias the test figure.
    """
    mistakes = (results.get(CHECK_LABELS_SPLIT) or {}).get("confident_mistakes") or []
    if not mistakes:
        return []
    lines = ["", "## Check these labels", "",
             f"The {min(len(mistakes), CHECK_LABELS_SHOWN)} most confident mistakes on {CHECK_LABELS_SPLIT}: "
             "if the picture shows the predicted class, the label is wrong; fix it at the source and ingest again.",
             "", "| image | given label | predicted | confidence |", "|---|---|---|---:|"]
    for mistake in mistakes[:CHECK_LABELS_SHOWN]:
        given, predicted, confidence = guess(mistake)
        name = str(mistake["name"]).replace("|", "\\|")
        lines.append(f"| `{name}` | {given} | {predicted} | {confidence:.3f} |")
    return lines


def _binary_guess(threshold):
    def guess(mistake):
        cat = mistake["score"] > threshold
        return ("cat" if mistake["label"] == 1 else "dog", "cat" if cat else "dog",
                mistake["score"] if cat else 1 - mistake["score"])
    return guess


def _class_guess(classes):
    def guess(mistake):
        return classes[mistake["label"]], classes[mistake["predicted"]], mistake["probability"]
    return guess


def _summary_lines(metrics, history):
    threshold = metrics["threshold"]
    return _header_lines(metrics, history, [f"- decision threshold: {threshold['value']:.2f}, chosen on "
                                            f"{threshold['chosen_on']} ({threshold['rule']})"])


def _header_lines(metrics, history, specific):
    """The report's title and the facts every report starts with; `specific` lines go before the epochs."""
    height, width = metrics["image_size"]
    other_data = "" if metrics["same_data_as_training"] else " (**not the data this run was trained on**)"
    return [
        f"# Evaluation of {os.path.basename(metrics['run'])}",
        "",
        f"- model: `{metrics['model']}` ({metrics['checkpoint']})",
        f"- data: `{metrics['data']}`, images {height}x{width}{other_data}",
        *specific,
        f"- epochs trained: {len(history)}",
    ]


def _table(header, rows, results):
    """A Markdown table: one column per split, one row per (label, cell function)."""
    splits = list(results)
    lines = [f"| {header} | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(results[s]) for s in splits) + " |")
    return lines


def _metrics_table(results, threshold):
    return _table("metric", [
        ("images (cats / dogs)", lambda r: f"{r['count']} ({r['cats']} / {r['dogs']})"),
        ("MSE", lambda r: _fmt(r["mse"])),
        ("Pearson r", lambda r: _fmt(r["pearson_r"])),
        ("log loss", lambda r: _fmt(r["log_loss"])),
        ("expected calibration error (probability of cat)", lambda r: _fmt(r["ece"])),
        ("ROC AUC", lambda r: _fmt(r["roc_auc"])),
        ("best accuracy of the 10 thresholds",
         lambda r: f"{_fmt(r['best_accuracy'])} (at {r['best_accuracy_threshold']:.2f})"),
        (f"accuracy at {threshold:.2f}", lambda r: _fmt(r["accuracy"])),
        ("precision (cat)", lambda r: _fmt(r["precision"])),
        ("recall (cat)", lambda r: _fmt(r["recall"])),
        ("F1 (cat)", lambda r: _fmt(r["f1"])),
        ("confusion tp / fp / tn / fn", lambda r: "{tp} / {fp} / {tn} / {fn}".format(**r["confusion"])),
    ], results)


def _undefined_lines(results):
    undefined = [(s, k, why) for s, r in results.items() for k, why in r["undefined"].items()]
    if not undefined:
        return []
    return ["", "n/a: " + "; ".join(f"{k} on {s}: {why}" for s, k, why in undefined)]


def _coarse_table(results):
    keys = next(iter(results.values()))["accuracy_at"]
    return _table("threshold", [(key, lambda r, key=key: _fmt(r["accuracy_at"][key])) for key in keys], results)


def _picture_lines(figures):
    lines = []
    for name, relative in figures.items():
        title = TITLES.get(name) or f"Most confident mistakes ({name.split('_', 1)[1]})"
        lines += [f"### {title}", "", f"![{title}]({relative})", ""]
    return lines


def _missing_picture_lines(figures, results, threshold):
    lines = []
    if "training_curves" not in figures:
        lines += ["No training curves: history.csv is empty or missing.", ""]
    for split, result in results.items():
        if not result["confident_mistakes"]:
            lines += [f"No mistakes on {split} at threshold {threshold:.2f}.", ""]
    return lines


# ---- more than two classes ---------------------------------------------------------------------

def _write_multiclass_report(out, metrics, history, mistake_images, figures, save):
    classes, results = metrics["classes"], metrics["splits"]
    save("confusion", _class_confusion_figure(results, classes, "counts"))
    save("confusion_normalized", _class_confusion_figure(results, classes, "normalized"))
    save("reliability", _reliability_figure(results, MULTICLASS_BIN_KEYS, "top probability (mean of its bin)",
                                            "accuracy in the bin"))
    if history:
        save("training_curves", _training_figure(history))
    for split, result in results.items():
        mistakes = result["confident_mistakes"]
        if mistakes:
            save(f"mistakes_{split}", _mistakes_figure(split, mistakes, mistake_images[split],
                                                           _class_caption(classes), title_room=0.8))
    lines = (_multiclass_summary_lines(metrics, history)
             + ["", "## Metrics", ""] + _multiclass_table(results) + _undefined_lines(results)
             + ["", "## Per class", ""] + _per_class_lines(results, classes)
             + _check_labels_lines(results, _class_guess(classes))
             + ["", "## Pictures", ""] + _picture_lines(figures)
             + (["No training curves: history.csv is empty or missing.", ""] if not history else [])
             + [f"No mistakes on {s}." for s, r in results.items() if not r["confident_mistakes"]])
    write_text_atomic(os.path.join(out, REPORT_NAME), "\n".join(lines).rstrip() + "\n")
    return figures


def _class_confusion_figure(results, classes, kind):
    n = len(classes)
    side = max(3.6, 0.45 * n + 1.6)
    fig, axes = new_figure(side * len(results), side, ncols=len(results))
    for ax, (split, result) in zip(axes, results.items()):
        rows = result["confusion"][kind]
        matrix = np.array([row if row is not None else [np.nan] * n for row in rows], dtype=np.float64)
        top = np.nanmax(matrix) if np.any(np.isfinite(matrix)) else 1
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(top, 1e-9))
        if n <= 20:  # more cells than that would be unreadable numbers
            for (i, j), value in np.ndenumerate(matrix):
                text = "-" if np.isnan(value) else (f"{int(value)}" if kind == "counts" else f"{value:.2f}")
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if value > top / 2 else "black")
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        title = "images" if kind == "counts" else "share of the true class"
        ax.set(xlabel="predicted", ylabel="true", title=f"{split}: {title}")
    return fig




def _class_caption(classes):
    def caption(mistake):
        return (f"{mistake['name']}\ntrue {classes[mistake['label']]}, called "
                f"{classes[mistake['predicted']]} ({mistake['probability']:.3f})")
    return caption


def _multiclass_summary_lines(metrics, history):
    return _header_lines(metrics, history, [f"- {len(metrics['classes'])} classes: {', '.join(metrics['classes'])}",
                                            f"- decision threshold: {metrics['threshold']['rule']}"])


def _multiclass_table(results):
    first = next(iter(results.values()))
    rows = [("images", lambda r: str(r["count"])), ("accuracy", lambda r: _fmt(r["accuracy"]))]
    rows += [(f"top-{k} accuracy", lambda r, k=k: _fmt(r[f"top_{k}_accuracy"])) for k in (3, 5)
             if f"top_{k}_accuracy" in first]
    for average in ("macro", "weighted"):
        rows += [(f"{average} {m}", lambda r, a=average, m=m: _fmt(r[a][m])) for m in ("precision", "recall", "f1")]
    rows += [("macro ROC AUC (one-vs-rest)", lambda r: _fmt(r["macro_roc_auc"])),
             ("log loss", lambda r: _fmt(r["log_loss"])),
             ("expected calibration error", lambda r: _fmt(r["ece"]))]
    return _table("metric", rows, results)


def _per_class_lines(results, classes):
    lines = []
    for split, result in results.items():
        lines += [f"### {split}", "", "| class | images | predicted | precision | recall | F1 | ROC AUC |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for c in result["per_class"]:
            lines.append(f"| {c['class']} | {c['support']} | {c['predicted']} | {_fmt(c['precision'])} | "
                         f"{_fmt(c['recall'])} | {_fmt(c['f1'])} | {_fmt(c['roc_auc'])} |")
        lines.append("")
    return lines
