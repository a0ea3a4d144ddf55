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

from evaluate.run import evaluate_run
from shards.errors import UserError
from shards.format import sha256_file
from shards.fsio import write_text_atomic
from train.rundir import BEST, RunDir

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


def compare_runs(run_dirs, out=None, progress=True):
    """One row (dict with the COLUMNS keys; None where unknown) per run.

    Runs lacking an up-to-date metrics.json are evaluated first. When `out`
    is given the Markdown table is written there too.
    """
    if not run_dirs:
        raise UserError("nothing to compare: name at least one run directory")
    rows = [_row(RunDir(run_dir), progress) for run_dir in run_dirs]
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        write_text_atomic(out, markdown_table(rows) + "\n")  # an earlier table stays whole if this write fails
    return rows


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
    seconds = [h["seconds"] for h in history if "seconds" in h]
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
