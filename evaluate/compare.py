"""`compare`: several runs side by side, as one Markdown table.

Each row comes from a run's own files: config.json (model, sizes, params),
history.csv (epochs, seconds per epoch), the checkpoint's size on disk and
metrics.json. A run without a current metrics.json (none yet, or written
for another checkpoint file) is evaluated first, with the default settings.
"""
import json
import os

from evaluate.run import CHECKPOINTS, METRICS_NAME, evaluate_run
from shards.errors import UserError
from shards.format import sha256_file
from train.rundir import read_config, read_history

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
)


def compare_runs(run_dirs, out=None, progress=True):
    """One row (dict with the COLUMNS keys; None where unknown) per run.

    Runs lacking an up-to-date metrics.json are evaluated first. When `out`
    is given the Markdown table is written there too.
    """
    if not run_dirs:
        raise UserError("nothing to compare: name at least one run directory")
    rows = [_row(run_dir, progress) for run_dir in run_dirs]
    if out:
        folder = os.path.dirname(os.path.abspath(out))
        os.makedirs(folder, exist_ok=True)
        with open(out, "w") as f:
            f.write(markdown_table(rows) + "\n")
    return rows


def markdown_table(rows):
    """The rows as a Markdown table; "-" marks a value that is not known."""
    lines = ["| " + " | ".join(header for _, header, _ in COLUMNS) + " |",
             "|" + "|".join("---" if key in ("run", "model") else "---:" for key, _, _ in COLUMNS) + "|"]
    for row in rows:
        cells = ["-" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _row(run_dir, progress):
    config = read_config(run_dir)
    history = read_history(run_dir)
    metrics = _current_metrics(run_dir, progress)
    model_path = os.path.join(run_dir, CHECKPOINTS["best"])
    seconds = [h["seconds"] for h in history if "seconds" in h]
    splits = metrics["splits"]
    val, test = splits.get("val", {}), splits.get("test", {})
    return {
        "run": os.path.basename(os.path.normpath(run_dir)),
        "model": config.get("model"),
        "params": config.get("params"),
        "model_mb": os.path.getsize(model_path) / 1e6,
        "train_size": config.get("train_size"),
        "val_size": config.get("val_size"),
        "epochs": len(history),
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "val_mse": val.get("mse"),
        "val_pearson_r": val.get("pearson_r"),
        "val_best_accuracy": val.get("best_accuracy"),
        "val_roc_auc": val.get("roc_auc"),
        "threshold": metrics["threshold"]["value"],
        "test_accuracy": test.get("accuracy"),
    }


def _current_metrics(run_dir, progress):
    """metrics.json of the run's best.keras, evaluating the run when it has none."""
    path = os.path.join(run_dir, METRICS_NAME)
    if os.path.exists(path):
        try:
            with open(path) as f:
                metrics = json.load(f)
        except (OSError, ValueError):
            metrics = None  # damaged: evaluate again
        model_path = os.path.join(run_dir, CHECKPOINTS["best"])
        if (metrics and metrics.get("checkpoint") == CHECKPOINTS["best"] and os.path.exists(model_path)
                and metrics.get("checkpoint_sha256") == sha256_file(model_path)):
            return metrics
    return evaluate_run(run_dir, progress=progress)
