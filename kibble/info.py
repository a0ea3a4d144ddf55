"""`info`: what has been ingested and trained so far, from the files alone.

Reads manifest.json of a shard folder and, for each run directory under a
runs folder, config.json, state.json, history.csv and metrics.json. Nothing
is recomputed and TensorFlow is not imported. A missing or unreadable piece
is reported as absent (with the reason), never as an error, unless there is
nothing at all to show.
"""
import json
import os

from evaluate.run import METRICS_NAME
from shards.errors import UserError
from shards.manifest import MANIFEST_NAME, SPLITS, load_manifest
from train.rundir import CONFIG, STATE, read_config, read_history


def info(data_dir, runs_root):
    """Describe the shards in `data_dir` and the runs in `runs_root`.

    Returns:
        {"data": {...} or None, "data_problem": str or None,
         "runs_root": str, "runs": [{...}, ...] (oldest first)}.
        "data" holds folder, splits ({split: {count, cats, dogs, shards}}),
        image_size [h, w], fit, shards, bytes, images, skipped, excluded,
        duplicates and source. Each run holds run, model, epochs_done, epochs,
        train_size, val_size, best_val_accuracy (None before the first
        epoch) and test_accuracy (None until evaluated on test).

    Raises:
        UserError: neither a shard folder nor any run is there.
    """
    data, problem = _data(data_dir)
    runs = _runs(runs_root)
    if data is None and not runs:
        raise UserError(f"nothing to show: no shards in {data_dir} ({problem}) and no run in {runs_root}/; "
                        "run `ingest` first")
    return {"data": data, "data_problem": problem, "runs_root": str(runs_root), "runs": runs}


def _data(data_dir):
    if not os.path.exists(os.path.join(data_dir, MANIFEST_NAME)):
        return None, f"no {MANIFEST_NAME}"
    try:
        manifest = load_manifest(data_dir)
        data = manifest.data
        totals, settings = data["totals"], data["settings"]
        splits = {split: {"count": s["count"], "cats": s["cats"], "dogs": s["dogs"], "shards": len(s["shards"])}
                  for split, s in data["splits"].items()}
        return {
            "folder": str(data_dir),
            "splits": {split: splits[split] for split in SPLITS if split in splits},
            "image_size": list(settings["size"]),
            "fit": settings["fit"],
            **{key: totals[key] for key in ("images", "shards", "bytes", "skipped", "excluded", "duplicates")},
            "source": data.get("source", {}).get("path"),
        }, None
    except UserError as exc:
        return None, str(exc)
    except (KeyError, TypeError) as exc:
        return None, f"{os.path.join(data_dir, MANIFEST_NAME)} lacks {exc}; run `ingest --force` to rebuild"


def _runs(runs_root):
    if not os.path.isdir(runs_root):
        return []
    names = [d for d in os.listdir(runs_root) if os.path.exists(os.path.join(runs_root, d, CONFIG))]
    runs = [_run(os.path.join(runs_root, d)) for d in names]
    return sorted(runs, key=lambda r: (r["modified"], r["run"]))


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _run(run_dir):
    try:
        config = read_config(run_dir)
    except (UserError, ValueError):
        config = {}
    history = _history(run_dir)
    state = _read_json(os.path.join(run_dir, STATE)) or {}
    metrics = _read_json(os.path.join(run_dir, METRICS_NAME)) or {}
    accuracies = [row["val_accuracy"] for row in history if "val_accuracy" in row]
    test = (metrics.get("splits") or {}).get("test") or {}
    return {
        "run": run_dir,
        "model": config.get("model"),
        "epochs_done": state.get("epoch", len(history)),
        "epochs": config.get("epochs"),
        "train_size": config.get("train_size"),
        "val_size": config.get("val_size"),
        "best_val_accuracy": max(accuracies) if accuracies else None,
        "test_accuracy": test.get("accuracy"),
        "threshold": (metrics.get("threshold") or {}).get("value"),
        "modified": os.path.getmtime(os.path.join(run_dir, CONFIG)),
    }


def _history(run_dir):
    try:
        return read_history(run_dir)
    except (OSError, ValueError, KeyError):
        return []
