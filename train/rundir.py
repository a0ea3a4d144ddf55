"""Run directories: where one training run keeps everything it produced.

    runs/<model>-<YYYYmmdd-HHMMSS>/
        config.json    every setting of the run (TrainSettings) plus the data it used
        best.keras     the model of the epoch with the lowest validation loss
        last.keras     the model after the last finished epoch
        history.csv    one row per finished epoch: epoch (1-based), loss, accuracy,
                       val_loss, val_accuracy, seconds, lr
        state.json     resume state: last finished epoch, best val_loss so far
        logs/          TensorBoard event files
    runs/LATEST        a text file naming the newest run directory (relative)
"""
import csv
import json
import os

from shards.errors import UserError
from shards.manifest import write_json_atomic

LATEST = "LATEST"
CONFIG, BEST, LAST, HISTORY, STATE = "config.json", "best.keras", "last.keras", "history.csv", "state.json"


def mark_latest(run_dir):
    root = os.path.dirname(os.path.abspath(run_dir))
    tmp = os.path.join(root, f".{LATEST}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(os.path.basename(os.path.abspath(run_dir)) + "\n")
    os.replace(tmp, os.path.join(root, LATEST))


def latest_run(runs_root="runs"):
    """The newest run directory under `runs_root`; UserError if there is none."""
    pointer = os.path.join(runs_root, LATEST)
    if os.path.exists(pointer):
        with open(pointer) as f:
            candidate = os.path.join(runs_root, f.read().strip())
        if os.path.isdir(candidate):
            return candidate
    runs = [os.path.join(runs_root, d) for d in os.listdir(runs_root)] if os.path.isdir(runs_root) else []
    runs = [d for d in runs if os.path.exists(os.path.join(d, CONFIG))]
    if not runs:
        raise UserError(f"no training run in {runs_root}/: run `train` first (or name a run directory)")
    return max(runs, key=os.path.getmtime)


def read_config(run_dir):
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG}); run `train` first")
    with open(path) as f:
        return json.load(f)


def write_config(run_dir, config):
    write_json_atomic(os.path.join(run_dir, CONFIG), config)


def read_history(run_dir):
    """History rows as dicts of floats (epoch as int); [] when none yet."""
    path = os.path.join(run_dir, HISTORY)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v not in ("", None)}
            for row in rows]
