"""`info`: what has been ingested and trained so far, from the files alone.

Reads manifest.json of a shard folder and, for each run directory under a
runs folder, config.json, state.json, history.csv and metrics.json. Nothing
is recomputed and TensorFlow is not imported. A missing or unreadable piece
is reported as absent (with the reason), never as an error, unless there is
nothing at all to show.
"""
import os

from ingest.summary import class_table
from shards import storage
from shards.errors import UserError
from shards.manifest import MANIFEST_NAME, SPLITS, load_manifest
from train.rundir import Runs


def info(data_dir, runs_root, need_data=None):
    """Describe the shards in `data_dir` and the runs in `runs_root`.

    `need_data` names what needs the shards (e.g. "--report"): without
    them it is then an error, whatever runs there are.

    Returns:
        {"data": {...} or None, "data_problem": str or None,
         "runs_root": str, "runs": [{...}, ...] (oldest first)}.
        "data" holds folder, classes (names in index order), splits
        ({split: {count, class_counts, shards}}),
        image_size [h, w], fit, shards, bytes, images, skipped, excluded,
        duplicates, source and near_duplicates ({near_duplicate_groups,
        near_duplicate_groups_crossing_splits, near_duplicate_conflicts}, None
        for a manifest from before near-duplicates were looked for). Each run holds run, model, epochs_done, epochs,
        train_size, val_size, best_val_accuracy (None before the first
        epoch), test_accuracy (None until evaluated on test), test_scoring
        ("plain", or "flip" when the last `evaluate` had --tta) and classes
        (the class names the run recorded, None for a run that records none).

    Raises:
        UserError: neither a shard folder nor any run is there, or no shards and `need_data`.
    """
    data, problem = _data(data_dir)
    if data is None and need_data:
        raise UserError(f"{need_data} needs shards, but there are none in {storage.public(str(data_dir))} "
                        f"({problem}); run `ingest` first or pass --data")
    runs = _runs(runs_root)
    if data is None and not runs:
        raise UserError(f"nothing to show: no shards in {data_dir} ({problem}) and no run in {runs_root}/; "
                        "run `ingest` first")
    return {"data": data, "data_problem": problem, "runs_root": str(runs_root), "runs": runs}


def _data(data_dir):
    try:
        if not storage.exists(storage.join(storage.local_path(data_dir), MANIFEST_NAME)):
            return None, f"no {MANIFEST_NAME}"
        manifest = load_manifest(data_dir)
        data = manifest.data
        totals, settings = data["totals"], data["settings"]
        splits = {split: {"count": s["count"], "class_counts": s["class_counts"], "shards": len(s["shards"])}
                  for split, s in data["splits"].items()}
        return {
            "folder": storage.public(str(data_dir)),
            "classes": manifest.classes,
            "splits": {split: splits[split] for split in SPLITS if split in splits},
            "image_size": list(settings["size"]),
            "fit": settings["fit"],
            **{key: totals[key] for key in ("images", "shards", "bytes", "skipped", "excluded", "duplicates")},
            # None when near-duplicates were not looked for: a manifest written before they were,
            # or an ingest with --near-distance off (its zero totals would read as "none found").
            "near_duplicates": ({key: totals[key] for key in (
                "near_duplicate_groups", "near_duplicate_groups_crossing_splits", "near_duplicate_conflicts")}
                if "near_duplicate_groups" in totals
                and (data.get("fingerprint") or {}).get("near_distance") is not None else None),
            "source": data.get("source", {}).get("path"),
        }, None
    except UserError as exc:
        return None, str(exc)
    except (KeyError, TypeError) as exc:
        return None, f"{os.path.join(data_dir, MANIFEST_NAME)} lacks {exc}; run `ingest --force` to rebuild"


def _runs(runs_root):
    return [_run(run) for run in Runs(runs_root).all()]


def _run(run):
    """What the run's files say; a missing or damaged file counts as absent."""
    config = _or_empty(run.config) or {}
    history = _or_empty(run.history) or []
    state = _or_empty(run.state) or {}
    metrics = _or_empty(run.metrics)
    metrics = metrics if isinstance(metrics, dict) else {}  # valid JSON, but not what evaluate writes
    accuracies = [row["val_accuracy"] for row in history if "val_accuracy" in row]
    test = (metrics.get("splits") or {}).get("test") or {}
    return {
        "run": run.path,
        "model": config.get("model"),
        "epochs_done": state.get("epoch", len(history)),
        "epochs": config.get("epochs"),
        "train_size": config.get("train_size"),
        "val_size": config.get("val_size"),
        "best_val_accuracy": max(accuracies) if accuracies else None,
        "test_accuracy": test.get("accuracy"),
        # evaluate and evaluate --tta each rewrite metrics.json: say which one the figure is from
        "test_scoring": ("flip" if metrics.get("tta") else "plain") if test else None,
        "threshold": (metrics.get("threshold") or {}).get("value"),
        "classes": config.get("classes") or metrics.get("classes"),
        "modified": run.modified(),
    }


def _tta_mark(run):
    """" tta" after a test accuracy that is the mirror-averaged figure of `evaluate --tta`, else ""."""
    return " tta" if run.get("test_scoring") == "flip" else ""


def _or_empty(read):
    """read(), or None when the file is missing, unreadable or damaged."""
    try:
        return read()
    except (OSError, UserError, ValueError, KeyError):
        return None


def _class_names(classes, shown=6):
    if not classes:
        return "-"
    return f"{len(classes)}: " + ", ".join(classes[:shown]) + (", ..." if len(classes) > shown else "")


def info_text(facts, data_dir):
    """The facts of `info` as the text `kibble info` prints."""
    def cell(value, fmt="{}"):
        return "-" if value is None else fmt.format(value)

    data = facts["data"]
    if data is None:
        lines = [f"shards: none in {data_dir} ({facts['data_problem']})"]
    else:
        lines = [f"shards: {data['folder']}: {data['images']} images of {data['image_size'][0]}x"
                 f"{data['image_size'][1]} ({data['fit']}) in {data['shards']} shards, "
                 f"{data['bytes'] / 1e6:,.1f} MB; {data['skipped']} skipped, {data['excluded']} excluded, "
                 f"{data['duplicates']} duplicates; {len(data['classes'])} classes",
                 *class_table(data["classes"], data["splits"], indent="  ")]
        near = data.get("near_duplicates")
        if near is not None:
            lines.insert(1, f"  near-duplicate groups: {near['near_duplicate_groups']} "
                            f"({near['near_duplicate_groups_crossing_splits']} crossing splits, "
                            f"{near['near_duplicate_conflicts']} under different labels)")
    if not facts["runs"]:
        lines.append(f"runs: none in {facts['runs_root']}/")
    else:
        lines.append(f"runs in {facts['runs_root']}/:")
        # a classes column only when some run records its classes (runs of before N classes do not)
        named = any(run.get("classes") for run in facts["runs"])
        lines.append(f"  {'run':<32} {'model':<10} {'epochs':>7} {'best val acc':>12} {'test acc':>9}"
                     + ("  classes" if named else ""))
        for run in facts["runs"]:
            epochs = f"{run['epochs_done']}/{cell(run['epochs'])}"
            lines.append(f"  {os.path.basename(run['run']):<32} {cell(run['model']):<10} {epochs:>7} "
                         f"{cell(run['best_val_accuracy'], '{:.3f}'):>12} {cell(run['test_accuracy'], '{:.3f}') + _tta_mark(run):>9}"
                         + (f"  {_class_names(run.get('classes'))}" if named else ""))
    return "\n".join(lines)
