"""`evaluate`: score a trained run on held-out shards; write metrics and a report.

    <out>/                 the run directory unless `out` is given
        metrics.json       every number; its keys are listed in evaluate/README.md
        report.md          tables and pictures for a person to read
        figures/*.png      ROC, accuracy vs threshold, score histograms,
                           confusion matrices, training curves, worst mistakes

Images are streamed shard by shard in blocks of `batch_size` through the
model; only one block of images and one float per image are held in memory.
The decision threshold is chosen on the validation split (best accuracy on
a 0.00..1.00 grid) and applied unchanged to every other split, so the test
figures never peek at test labels.
"""
import datetime
import os
import time

import numpy as np

from evaluate.metrics import COARSE_GRID, Accumulator
from shards.errors import UserError
from shards.format import ShardReader, sha256_file
from shards.manifest import load_manifest, verify_shards, write_json_atomic
from shards.progress import Progress
from train.rundir import BEST, CONFIG, LAST, read_config, read_history

METRICS_NAME, REPORT_NAME = "metrics.json", "report.md"
METRICS_SCHEMA = 1
SPLITS = ("train", "val", "test")
CHECKPOINTS = {"best": BEST, "last": LAST}
# Worst mistakes kept per split (in metrics.json and the picture grid).
MISTAKES_KEPT = 16
# Used only when the data has no validation split to choose a threshold on.
DEFAULT_THRESHOLD = 0.5


def evaluate_run(run_dir, data=None, splits=("val", "test"), out=None, batch_size=256,
                 checkpoint="best", progress=True, tta=False, verify=True):
    """Evaluate the model of `run_dir` and write metrics.json, report.md and figures.

    Args:
        run_dir: a run directory made by `train` (config.json, best.keras, ...).
        data: shard folder; default the one the run was trained on (config "data").
        splits: splits to evaluate, among "train", "val", "test". Whenever the
            data has a "val" split it is evaluated too: the threshold comes from it.
        out: folder for the outputs; default `run_dir`.
        batch_size: images per `predict_on_batch` call.
        checkpoint: "best" (best.keras) or "last" (last.keras).
        progress: draw a progress bar on stderr.
        tta: score each image as the mean of the model's outputs on it and on
            its mirror image (test-time augmentation; costs twice the time).
        verify: compare the sha256 of every shard read (val included, the
            threshold's source) with the manifest before scoring, as `train`
            does. Each shard's split, size and count are checked either way.

    Returns:
        The metrics.json document as a dict, plus "out" (the output folder)
        and "warnings" (list of str), which are not written to the file.

    Raises:
        UserError: no such run, model missing or damaged, data missing or
            damaged, a shard not what the manifest lists, image size not the
            model's input size, a split not in the data.
    """
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = [s for s in splits if s not in SPLITS]
    if not splits or unknown:
        raise ValueError(f"splits must be a non-empty selection of {SPLITS}. Received: splits={splits!r}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {tuple(CHECKPOINTS)}. Received: checkpoint={checkpoint!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size!r}")
    if not os.path.isdir(run_dir):
        raise UserError(f"no run directory at {run_dir}: run `train` first, or name an existing run")
    started = time.monotonic()
    config = read_config(run_dir)
    data = data or config.get("data")
    if not data:
        raise UserError(f"{os.path.join(run_dir, CONFIG)} names no shard folder (\"data\"); pass --data")
    manifest = load_manifest(data)
    for split in splits:
        if not manifest.shards(split):
            present = ", ".join(s for s in manifest.data["splits"] if manifest.shards(s)) or "none"
            raise UserError(f"the shards in {data} have no {split!r} split (splits present: {present}); "
                            f"choose another split or re-run `ingest` with a {split} share")
    wanted = [s for s in SPLITS if s in splits or (s == "val" and manifest.shards("val"))]
    _check_shards(manifest, wanted, verify)

    model_path = os.path.join(run_dir, CHECKPOINTS[checkpoint])
    model = _load_model(model_path)
    _check_input_size(model, model_path, manifest)

    total = sum(manifest.split_count(s) for s in wanted)
    bar = Progress(total, "evaluate", enabled=progress)
    try:
        accumulators = {s: _score_split(model, manifest, s, int(batch_size), bar, tta) for s in wanted}
    finally:
        bar.close()

    if "val" in accumulators:
        threshold, chosen_on = accumulators["val"].best_threshold(), "val"
    else:
        threshold, chosen_on = DEFAULT_THRESHOLD, "default: the data has no val split"
    results = {}
    for split, acc in accumulators.items():
        results[split] = acc.summary(threshold)
        results[split]["confident_mistakes"] = _worst_mistakes(acc, manifest, split, threshold)

    warnings = []
    same_data = config.get("manifest_sha256") == manifest.checksum
    if not same_data:
        warnings.append(f"{data} is not the data this run was trained on (manifest sha256 differs): "
                        "val/test images may overlap its training images")
    out = out or run_dir
    os.makedirs(out, exist_ok=True)
    metrics = {
        "schema_version": METRICS_SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": os.path.abspath(run_dir),
        "model": config.get("model"),
        "checkpoint": CHECKPOINTS[checkpoint],
        "tta": "flip" if tta else None,
        "checkpoint_sha256": sha256_file(model_path),
        "data": os.path.abspath(data),
        "manifest_sha256": manifest.checksum,
        "same_data_as_training": same_data,
        "image_size": list(manifest.image_shape[:2]),
        "threshold": {
            "value": threshold,
            "chosen_on": chosen_on,
            "rule": "highest accuracy on thresholds 0.00, 0.01, ..., 1.00 (cat when score > threshold); "
                    "ties go to the threshold nearest 0.5",
        },
        "accuracy_thresholds": [float(t) for t in COARSE_GRID],
        "splits": results,
    }
    from evaluate.report import write_report

    metrics["figures"] = write_report(out, metrics, accumulators, read_history(run_dir),
                                      lambda split, items: _read_images(manifest, split, items))
    metrics["seconds"] = round(time.monotonic() - started, 2)
    write_json_atomic(os.path.join(out, METRICS_NAME), metrics)
    return {**metrics, "out": out, "warnings": warnings}


def _check_shards(manifest, splits, checksum):
    """UserError unless every shard of `splits` is the one the manifest lists.

    Scores of a replaced shard (another split's, another ingest's) would be
    silently wrong numbers, so this runs before the model is even loaded.
    """
    problems = verify_shards(manifest, splits=splits, checksum=checksum)
    if problems:
        raise UserError(f"{problems[0]} ({len(problems)} shard(s) failed; run `verify` for all, "
                        "or `ingest` again to rebuild)")


def _load_model(path):
    """The Keras model at `path`; UserError when it is missing or unreadable."""
    if not os.path.exists(path):
        run_dir, name = os.path.split(path)
        raise UserError(f"no {name} in {run_dir}: training has not finished an epoch there yet; "
                        "train it (or resume it) first")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file; all mean the same here
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load the model {path} ({type(exc).__name__}: {detail[:200]}); the file "
                        "is damaged or not a Keras model: train again, or evaluate --checkpoint last") from None


def _check_input_size(model, path, manifest):
    expected = tuple(manifest.image_shape)
    if len(model.inputs) != 1:
        raise UserError(f"the model {path} has {len(model.inputs)} inputs; evaluate needs one image input")
    found = tuple(model.inputs[0].shape[1:])
    if found != expected:
        size = "x".join(str(d) for d in found[:2])
        raise UserError(
            f"the model {path} takes images of {'x'.join(str(d) for d in found)}, but the shards in "
            f"{manifest.folder} hold {'x'.join(str(d) for d in expected)}; pass --data with shards "
            f"ingested at --size {size}")


def _score_split(model, manifest, split, batch_size, bar, tta=False):
    """Stream every image of `split` through the model; an Accumulator of its scores."""
    acc = Accumulator()
    for images, labels, where in _blocks(manifest, split, batch_size):
        scores = np.asarray(model.predict_on_batch(images))
        if tta:  # average with the mirror image (width is axis 2)
            scores = (scores + np.asarray(model.predict_on_batch(images[:, :, ::-1]))) / 2
        if scores.shape not in ((len(images), 1), (len(images),)):
            raise UserError(f"the model outputs shape {scores.shape[1:]} per image; evaluate needs "
                            "one sigmoid probability of cat per image")
        try:
            acc.update(scores, labels)
        except ValueError as exc:
            raise UserError(f"scores of {where}: {exc}; the model is broken (did training diverge?)") from None
        bar.update(len(images))
    return acc


def _blocks(manifest, split, batch_size):
    """Yield (uint8 images, int8 labels, description) of `batch_size` images, the last one shorter.

    Blocks run across shard boundaries so the model sees at most two batch
    shapes per split (TensorFlow retraces its predict function per shape).
    """
    pending, first = [], None
    held = 0
    for entry in manifest.shards(split):
        path = manifest.shard_path(entry)
        with ShardReader(path) as shard:
            labels = shard.labels
            if np.any(labels < 0):
                raise UserError(f"shard {path} holds unlabelled images; only labelled splits can be evaluated")
            start = 0
            while start < shard.count:
                stop = min(shard.count, start + batch_size - held)
                pending.append((shard.read(start, stop), labels[start:stop]))
                first = first or f"{split} images from {path} [{start}:]"
                held += stop - start
                start = stop
                if held == batch_size:
                    yield _joined(pending) + (first,)
                    pending, first, held = [], None, 0
    if pending:
        yield _joined(pending) + (first,)


def _joined(pieces):
    if len(pieces) == 1:
        return pieces[0]
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


def _worst_mistakes(acc, manifest, split, threshold):
    """The misclassified images whose score is farthest from their label, worst first."""
    scores, labels = acc.scores, acc.labels
    wrong = np.flatnonzero((scores > threshold) != (labels == 1))
    worst = wrong[np.argsort(-np.abs(scores[wrong] - labels[wrong]), kind="stable")][:MISTAKES_KEPT]
    names = _names_at(manifest, split, worst)
    return [{"name": name, "label": int(labels[i]), "score": float(scores[i]), "index": int(i)}
            for i, name in zip(worst, names)]


def _locate(manifest, split, positions):
    """(shard path, row) of each position in the split's streaming order."""
    entries = manifest.shards(split)
    ends = np.cumsum([e["count"] for e in entries])
    found = []
    for pos in positions:
        k = int(np.searchsorted(ends, pos, side="right"))
        found.append((manifest.shard_path(entries[k]), int(pos - (ends[k] - entries[k]["count"]))))
    return found


def _names_at(manifest, split, positions):
    names, cache = [], {}
    for path, row in _locate(manifest, split, positions):
        if path not in cache:
            with ShardReader(path) as shard:
                cache[path] = shard.names
        names.append(cache[path][row])
    return names


def _read_images(manifest, split, items):
    """uint8 images (n, H, W, 3) of the given mistakes (dicts with "index")."""
    height, width, _ = manifest.image_shape
    images = np.empty((len(items), height, width, 3), dtype=np.uint8)
    for k, (path, row) in enumerate(_locate(manifest, split, [m["index"] for m in items])):
        with ShardReader(path) as shard:
            images[k] = shard.read(row, row + 1)[0]
    return images
