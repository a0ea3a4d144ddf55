"""`compare`: several runs side by side, as one Markdown table.

Each row comes from a run's own files: config.json (model, sizes, params),
history.csv (epochs, seconds per epoch), the checkpoint's size on disk and
metrics.json. With more than two classes there is no threshold ("-"), "val
AUC" is the one-vs-rest macro AUC and "test acc. at threshold" the accuracy
of the most probable class. A run without a current metrics.json (none yet,
written for another checkpoint file, or by `evaluate --tta`) is evaluated
first, with the default settings: every row is of plain scores.
"""
import os

import numpy as np

from evaluate.report import new_figure
from evaluate.run import evaluate_run
from shards.errors import UserError
from shards.format import sha256_file
from shards.fsio import atomic_path, write_text_atomic
from train.rundir import BEST, RunDir, whole_epochs

# (key, column header, format) in table order.
COLUMNS = (
    ("run", "run", "{}"),
    ("model", "model", "{}"),
    ("params", "params", "{:,}"),
    ("model_mb", "best.keras MB", "{:.2f}"),
    ("train_size", "train", "{:,}"),
    ("val_size", "val", "{:,}"),
    ("epochs", "epochs", "{}"),
    ("seconds_per_epoch", "s/epoch", "{:.1f}"),
    ("val_mse", "val MSE", "{:.4f}"),
    ("val_pearson_r", "val Pearson r", "{:.3f}"),
    ("val_best_accuracy", "val best acc. (10 thr.)", "{:.3f}"),
    ("val_roc_auc", "val AUC", "{:.3f}"),
    ("threshold", "threshold", "{:.2f}"),
    ("test_accuracy", "test acc. at threshold", "{:.3f}"),
    ("val_macro_f1", "val macro-F1", "{:.3f}"),
    ("classes", "classes", "{}"),
    ("test_class_counts", "test images per class", "{}"),
)


def compare_runs(run_dirs, out=None, progress=True, curve=None):
    """One row (dict with the COLUMNS keys; None where unknown) per run.

    Runs lacking an up-to-date metrics.json are evaluated first. When `out`
    is given the Markdown table is written there too; when `curve` is given,
    the time-to-accuracy figure (see `time_to_accuracy`) is saved there as PNG.
    """
    if not run_dirs:
        raise UserError("nothing to compare: name at least one run directory")
    if curve and not curve.lower().endswith(".png"):
        raise UserError(f"--curve must name a .png file. Received: {curve}")
    rows = [_row(RunDir(run_dir), progress) for run_dir in run_dirs]
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        write_text_atomic(out, markdown_table(rows) + "\n")  # an earlier table stays whole if this write fails
    if curve:
        save_time_to_accuracy(run_dirs, curve)
    return rows


def time_to_accuracy(run):
    """(minutes, validation accuracy) arrays of a run, one point per finished epoch.

    The minutes are the wall-clock training time summed over history.csv's
    epochs (the `seconds` column: the epoch and its validation pass), so a
    resumed run's pause does not count. Epochs without both values are left
    out.
    """
    rows = [h for h in run.history() if h.get("seconds") is not None and h.get("val_accuracy") is not None]
    minutes = np.cumsum([float(h["seconds"]) for h in rows]) / 60.0
    return minutes, np.array([float(h["val_accuracy"]) for h in rows])


def save_time_to_accuracy(run_dirs, path):
    """Validation accuracy against wall-clock minutes of training, one line per run, as a PNG at `path`
    (written whole or not at all)."""
    fig, (ax,) = new_figure(7, 4.5)
    for run_dir in run_dirs:
        run = RunDir(run_dir)
        minutes, accuracy = time_to_accuracy(run)
        if len(minutes):
            ax.plot(minutes, accuracy, marker="o", markersize=3, label=run.name)
    ax.set_xlabel("wall-clock minutes of training")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Time to accuracy")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as temp:
        fig.savefig(temp, format="png", dpi=110)


def markdown_table(rows):
    """The rows as a Markdown table; "-" marks a value that is not known."""
    lines = ["| " + " | ".join(header for _, header, _ in COLUMNS) + " |",
             "|" + "|".join("---" if key in ("run", "model") else "---:" for key, _, _ in COLUMNS) + "|"]
    for row in rows:
        cells = ["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _row(run, progress):
    config = run.config()
    history = run.history()
    metrics = _current_metrics(run, progress)
    # The mean of whole epochs: a time budget's last epoch, cut short, is not one.
    seconds = [h["seconds"] for h in whole_epochs(history) or history if "seconds" in h]
    splits = metrics["splits"]
    val, test = splits.get("val", {}), splits.get("test", {})
    return {
        "run": run.name,
        "model": config.get("model"),
        "params": config.get("params"),
        "model_mb": os.path.getsize(run.checkpoint("best")) / 1e6,
        "train_size": config.get("train_size"),
        "val_size": config.get("val_size"),
        "epochs": len(history),
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "val_mse": val.get("mse"),
        "val_pearson_r": val.get("pearson_r"),
        "val_best_accuracy": val.get("best_accuracy"),
        "val_roc_auc": val.get("roc_auc", val.get("macro_roc_auc")),  # N > 2: the one-vs-rest macro AUC
        "threshold": (metrics.get("threshold") or {}).get("value"),
        "test_accuracy": test.get("accuracy"),
        "val_macro_f1": (val.get("macro") or {}).get("f1"),
        "classes": _names(metrics.get("classes") or config.get("classes")),
        "test_class_counts": _counts(test),
    }


def _names(classes, shown=8):
    """"a, b, c" (the first `shown` and how many more), None when the run does not record them."""
    if not classes:
        return None
    more = f", ... ({len(classes)} in all)" if len(classes) > shown else ""
    return ", ".join(classes[:shown]) + more


def _counts(split):
    """Images per class index of a split's metrics, as "n0 / n1 / ...", None when unknown."""
    counts = split.get("class_counts")
    if counts is None and "cats" in split and "dogs" in split:
        counts = [split["dogs"], split["cats"]]  # two classes: index 0 is the negative class
    if counts is None:
        return None
    return " / ".join(str(c) for c in counts)


def _current_metrics(run, progress):
    """metrics.json of the run's best.keras with plain scores, evaluating the run when it has none (or a
    damaged one, or one of `evaluate --tta`: a table mixing TTA rows with plain ones would mislead)."""
    try:
        metrics = run.metrics()
    except (OSError, UserError):
        metrics = None  # unreadable or not JSON: evaluate again
    model_path = run.checkpoint("best")
    if (isinstance(metrics, dict) and metrics.get("checkpoint") == BEST and os.path.exists(model_path)
            and metrics.get("tta") is None and metrics.get("checkpoint_sha256") == sha256_file(model_path)):
        return metrics
    return evaluate_run(run.path, progress=progress)
