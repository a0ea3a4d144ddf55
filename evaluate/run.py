"""`evaluate`: score a trained run on held-out shards; write metrics and a report.

    <out>/                 the run directory unless `out` is given
        metrics.json       every number; its keys are listed in evaluate/README.md
        report.md          tables and pictures for a person to read
        figures/*.png      ROC, accuracy vs threshold, score histograms,
                           confusion matrices, training curves, worst mistakes

Each split is read once (shards.stream), in batches of `batch_size` images
that run across shard boundaries. Held in memory: one batch, one float per
image, and the few images that may be the split's most confident mistakes.
Two classes: the model gives one sigmoid probability of class 1 (cat for
Dogs vs. Cats). The decision threshold is chosen on the validation split
(best accuracy on a 0.00..1.00 grid) and applied unchanged to every other
split, so the test figures never peek at test labels.

More than two classes: the model gives a softmax of N probabilities and the
prediction is the most probable class. There is no threshold (choosing one
on validation is a two-class idea); metrics.json says so. Held per image:
N floats (the one-vs-rest ROC AUC of each class needs them all).
"""
import datetime
import heapq
import json
import os
import time
from typing import NamedTuple

import numpy as np

from evaluate.inference import FLIP, PLAIN, model_outputs, scoring
from evaluate.metrics import COARSE_GRID, Accumulator, MulticlassAccumulator
from evaluate.report import write_report
from shards import stream
from shards.errors import UserError
from shards.format import sha256_file
from shards import storage
from shards.manifest import verify_shards, write_json_atomic
from shards.progress import Progress
from train.models import register as register_layers
from train.precision import load_model_in_float32, resolve_precision
from train.rundir import BEST, CONFIG, LAST, RunDir
from train.tf_env import quiet_logs

METRICS_NAME = "metrics.json"
METRICS_SCHEMA = 1
SPLITS = ("train", "val", "test")
CHECKPOINTS = {"best": BEST, "last": LAST}
# Worst mistakes kept per split (in metrics.json and the picture grid).
MISTAKES_KEPT = 16
# Used only when the data has no validation split to choose a threshold on.
DEFAULT_THRESHOLD = 0.5


def evaluate_run(run_dir, data=None, splits=("val", "test"), out=None, batch_size=256,
                 checkpoint="best", progress=True, tta=False, verify=True, access=None):
    """Evaluate the model of `run_dir` and write metrics.json, report.md and figures.

    Args:
        run_dir: a run directory made by `train` (config.json, best.keras, ...).
        data: shard folder or URL; default the one the run was trained on (config "data").
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
        access: how shards at a URL are read (shards.storage.Access):
            cached (default) or streamed.

    Returns:
        The metrics.json document as a dict, plus "out" (the output folder)
        and "warnings" (list of str), which are not written to the file.

    Raises:
        UserError: no such run, model missing or damaged, data missing or
            damaged, a shard not what the manifest lists, image size not the
            model's input size, a split not in the data.
    """
    started = time.monotonic()
    splits = _check_arguments(splits, checkpoint, batch_size)
    run = _read_run(run_dir)
    config = run.config()
    data = data or config.get("data")
    manifest = _load_data(data, run_dir, splits, access, verify, progress)
    scored = [s for s in SPLITS if s in splits or (s == "val" and manifest.shards("val"))]
    # Cached copies were checked as they were fetched: not hashed a second time.
    _check_shards(manifest, scored, verify and not storage.is_cached(data, access))
    model_path = run.checkpoint(checkpoint)
    model = _load_model(model_path)
    _check_input_size(model, model_path, manifest, config.get("image_size"))
    _check_outputs(model, model_path, manifest)

    accumulators, candidates = _score_splits(model, manifest, scored, int(batch_size), progress, tta)
    if manifest.num_classes == 2:
        threshold, chosen_on = _choose_threshold(accumulators)
        results, pictures = _split_results(accumulators, candidates, threshold)
        threshold = {"value": threshold, "chosen_on": chosen_on}
    else:
        results, pictures = _multiclass_results(accumulators, candidates)
        threshold = None

    out = out or run_dir
    os.makedirs(out, exist_ok=True)
    metrics = _metrics_document(run_dir, config, model_path, tta, data, manifest, threshold, results)
    if threshold is not None:
        metrics["thresholds"] = _thresholds(metrics, _earlier_metrics(os.path.join(out, METRICS_NAME)))
    metrics["figures"] = write_report(out, metrics, accumulators, run.history(), pictures)
    metrics["seconds"] = round(time.monotonic() - started, 2)
    write_json_atomic(os.path.join(out, METRICS_NAME), metrics)
    return {**metrics, "out": out, "warnings": _warnings(metrics, data)}


def _check_arguments(splits, checkpoint, batch_size):
    """The splits as a tuple; ValueError naming a bad argument."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = [s for s in splits if s not in SPLITS]
    if not splits or unknown:
        raise ValueError(f"splits must be a non-empty selection of {SPLITS}. Received: splits={splits!r}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {tuple(CHECKPOINTS)}. Received: checkpoint={checkpoint!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size!r}")
    return splits


def _read_run(run_dir):
    if not os.path.isdir(run_dir):
        raise UserError(f"no run directory at {run_dir}: run `train` first, or name an existing run")
    return RunDir(run_dir)


def _load_data(data, run_dir, splits, access=None, verify=True, progress=False):
    """The manifest of `data` (a folder or a URL), after checking it holds every split asked for."""
    if not data:
        raise UserError(f"{os.path.join(run_dir, CONFIG)} names no shard folder (\"data\"); name the shard folder to score")
    # val comes along whenever the data has it: the threshold is chosen there.
    manifest = storage.open_shards(data, access, splits={*splits, "val"}, verify=verify, progress=progress)
    if manifest.num_classes < 2:
        raise UserError(f"{manifest.folder} holds {manifest.num_classes} class ({', '.join(manifest.classes)}): "
                        "evaluating needs two classes or more; ingest images of other classes too")
    for split in splits:
        if not manifest.shards(split):
            present = ", ".join(s for s in manifest.data["splits"] if manifest.shards(s)) or "none"
            raise UserError(f"the shards in {data} have no {split!r} split (splits present: {present}); "
                            f"choose another split or re-run `ingest` with a {split} share")
    return manifest


def _choose_threshold(accumulators):
    """(threshold, where it was chosen): best val accuracy, or the default without val."""
    if "val" in accumulators:
        return accumulators["val"].best_threshold(), "val"
    return DEFAULT_THRESHOLD, "default: the data has no val split"


def _split_results(accumulators, candidates, threshold):
    """({split: its metrics at `threshold`}, {split: images of its worst mistakes})."""
    results, pictures = {}, {}
    for split, accumulator in accumulators.items():
        mistakes, pictures[split] = candidates[split].worst(threshold)
        results[split] = {**accumulator.summary(threshold), "confident_mistakes": mistakes}
    return results, pictures


def _multiclass_results(accumulators, candidates):
    """({split: its metrics}, {split: images of its most confident mistakes}) with N > 2 classes."""
    results, pictures = {}, {}
    for split, accumulator in accumulators.items():
        mistakes, pictures[split] = candidates[split].worst()
        results[split] = {**accumulator.summary(), "confident_mistakes": mistakes}
    return results, pictures


def _metrics_document(run_dir, config, model_path, tta, data, manifest, threshold, results):
    """metrics.json without "figures" and "seconds", which come last.

    `threshold` is {"value", "chosen_on"} with two classes, None with more.
    """
    manifest_sha256 = manifest.checksum
    document = {
        "schema_version": METRICS_SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": os.path.abspath(run_dir),
        "model": config.get("model"),
        "checkpoint": os.path.basename(model_path),
        "tta": "flip" if tta else None,
        "checkpoint_sha256": sha256_file(model_path),
        "data": storage.absolute(data),
        "manifest_sha256": manifest_sha256,
        "same_data_as_training": config.get("manifest_sha256") == manifest_sha256,
        "image_size": list(manifest.image_shape[:2]),
        "classes": manifest.classes,
        "threshold": {
            **(threshold or {}),
            "rule": "highest accuracy on thresholds 0.00, 0.01, ..., 1.00 (cat when score > threshold); "
                    "ties go to the threshold nearest 0.5",
        },
        "accuracy_thresholds": [float(t) for t in COARSE_GRID],
        "splits": results,
    }
    if threshold is not None:
        del document["classes"]  # the two-class document stays as it was before N classes
        return document
    document["threshold"] = {"value": None, "chosen_on": None,
                             "rule": f"none with {manifest.num_classes} classes: the prediction is the class of "
                                     "highest probability (a threshold chosen on val is a two-class idea)"}
    del document["accuracy_thresholds"]
    return document


# What each recorded threshold keeps of the evaluation that chose it (which model file, which data, when).
THRESHOLD_SOURCE = ("checkpoint", "checkpoint_sha256", "data", "created")


def _thresholds(document, earlier):
    """metrics.json's "thresholds": {way of scoring: the threshold chosen with it} for this checkpoint.

    This evaluation's threshold, and the other way's from the metrics.json it
    replaces when that one scored the same model file (same sha256): after
    `evaluate` and `evaluate --tta`, in either order, both are there, for
    `predict` and `predict --tta` (each way chooses its own on val).
    """
    mine = scoring(document["tta"] is not None)
    kept = {way: entry for way, entry in recorded_thresholds(earlier).items()
            if way != mine and entry.get("checkpoint_sha256") == document["checkpoint_sha256"]}
    kept[mine] = {"value": document["threshold"]["value"], "chosen_on": document["threshold"]["chosen_on"],
                  **{key: document[key] for key in THRESHOLD_SOURCE}}
    return {way: kept[way] for way in (PLAIN, FLIP) if way in kept}


def recorded_thresholds(metrics):
    """{way of scoring ("plain", "flip"): {"value", "chosen_on", ...}} that a metrics.json document records.

    Its "thresholds"; for a metrics.json written before they were kept per
    way, its one "threshold" under the way its "tta" names. Entries without
    a threshold in [0, 1] (N classes have none) are left out; {} for
    anything that is not a metrics.json document.
    """
    if not isinstance(metrics, dict):
        return {}
    found = metrics.get("thresholds")
    if not isinstance(found, dict):
        single = metrics.get("threshold")
        if not isinstance(single, dict):
            return {}
        extra = {key: metrics[key] for key in THRESHOLD_SOURCE if key in metrics}
        found = {scoring(metrics.get("tta") is not None): {**single, **extra}}
    return {way: entry for way, entry in found.items()
            if way in (PLAIN, FLIP) and isinstance(entry, dict) and _is_threshold(entry.get("value"))}


def _is_threshold(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _earlier_metrics(path):
    """The metrics.json at `path` as it stands, or None when there is none or it cannot be read."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # none yet, or damaged: nothing to keep from it
        return None


def _warnings(metrics, data):
    if metrics["same_data_as_training"]:
        return []
    return [f"{data} is not the data this run was trained on (manifest sha256 differs): "
            "val/test images may overlap its training images"]


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
    quiet_logs()
    import keras

    register_layers()  # the default model holds kibble's own layers (its augmentation, --upscale's)
    # A model trained in bfloat16 is computed in float32 on a CPU without bfloat16 (train.precision).
    load = keras.saving.load_model if resolve_precision("auto") == "bfloat16" else load_model_in_float32
    try:
        model = load(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file; all mean the same here
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load the model {path} ({type(exc).__name__}: {detail[:200]}); the file "
                        "is damaged or not a Keras model: train again, or evaluate --checkpoint last") from None
    return model


def takes_size(found, expected):
    """Whether a model input of shape `found` (batch axis left out) takes images of shape `expected`.

    A None dimension takes any size: the default model trained with
    `train --small-first` takes images of any height and width.
    """
    return len(found) == len(expected) and all(f is None or f == e for f, e in zip(found, expected))


def _check_input_size(model, path, manifest, trained_size=None):
    """A UserError unless the model takes the shards' images at the size it was trained for.

    A model that takes any size (smaller images first) is held to the size
    of the shards it was trained on (`trained_size`, config.json's
    "image_size"): scored at another, its figures would not be its own.
    """
    expected = tuple(manifest.image_shape)
    if len(model.inputs) != 1:
        raise UserError(f"the model {path} has {len(model.inputs)} inputs; evaluate needs one image input")
    found = tuple(model.inputs[0].shape[1:])
    if not takes_size(found, expected):
        size = "x".join(str(d) for d in found[:2])
        raise UserError(
            f"the model {path} takes images of {'x'.join(str(d) for d in found)}, but the shards in "
            f"{manifest.folder} hold {'x'.join(str(d) for d in expected)}; pass --data with shards "
            f"ingested at --size {size}")
    if trained_size and None in found[:2] and list(expected[:2]) != list(trained_size):
        size = "x".join(str(d) for d in trained_size)
        raise UserError(
            f"the model {path} was trained on images of {size}, but the shards in {manifest.folder} hold "
            f"{'x'.join(str(d) for d in expected[:2])}; pass --data with shards ingested at --size {size}")




def _score_splits(model, manifest, splits, batch_size, progress, tta):
    """({split: its accumulator}, {split: its mistake candidates}): one pass over each split."""
    bar = Progress(sum(manifest.split_count(s) for s in splits), "evaluate", enabled=progress)
    accumulators, candidates = {}, {}
    try:
        for split in splits:
            accumulators[split], candidates[split] = _score_split(model, manifest, split, batch_size, bar, tta)
    finally:
        bar.close()
    return accumulators, candidates


def _score_split(model, manifest, split, batch_size, bar, tta):
    """Stream every image of `split` through the model once, in batches of `batch_size`."""
    if manifest.num_classes == 2:
        accumulator, candidates = Accumulator(), _Candidates()
    else:
        accumulator, candidates = MulticlassAccumulator(manifest.classes), _MulticlassCandidates()
    batches = list(stream.exact_batches(stream.plan_blocks(manifest, split, block=batch_size), batch_size))
    for (images, labels, names), blocks in zip(stream.read_blocks(batches, names=True), batches):
        if np.any(labels < 0):
            path = _block_of(blocks, int(np.argmax(labels < 0))).path
            raise UserError(f"shard {path} holds unlabelled images; only labelled splits can be evaluated")
        scores = _predict(model, images, tta, manifest.num_classes)
        try:
            accumulator.update(scores, labels)
        except ValueError as exc:
            raise UserError(f"scores of {split} images from {blocks[0].path} [{blocks[0].start}:]: {exc}; "
                            "the model is broken (did training diverge?)") from None
        candidates.add(scores, labels, names, images, first=accumulator.count - len(labels))
        bar.update(len(labels))
    return accumulator, candidates


def _block_of(blocks, row):
    """The block holding row `row` of the images read from `blocks`."""
    ends = np.cumsum([len(block) for block in blocks])
    return blocks[int(np.searchsorted(ends, row, side="right"))]


def _check_outputs(model, path, manifest):
    """UserError unless the model gives one probability per class (N > 2); two classes are checked per batch."""
    if manifest.num_classes == 2:
        return
    found = model.outputs[0].shape[-1] if len(model.outputs) == 1 else None
    if found != manifest.num_classes:
        outputs = f"{found} output(s)" if found is not None else f"{len(model.outputs)} output tensors"
        raise UserError(f"the model {path} gives {outputs} per image, but the shards in {manifest.folder} hold "
                        f"{manifest.num_classes} classes ({', '.join(manifest.classes[:6])}"
                        f"{', ...' if manifest.num_classes > 6 else ''}); evaluate it on the data it was "
                        "trained on (--data)")


def _predict(model, images, tta, num_classes=2):
    """float64 scores (n,) of a batch (two classes) or probabilities (n, N); UserError when the shape is not that."""
    scores = model_outputs(model, images, tta)
    if num_classes > 2:
        if scores.shape != (len(images), num_classes):
            raise UserError(f"the model outputs shape {scores.shape[1:]} per image; evaluate needs "
                            f"{num_classes} softmax probabilities per image")
        return scores
    if scores.shape not in ((len(images), 1), (len(images),)):
        raise UserError(f"the model outputs shape {scores.shape[1:]} per image; evaluate needs "
                        "one sigmoid probability of cat per image")
    return scores.reshape(-1)


class _Candidate(NamedTuple):
    key: float  # score of a cat, minus the score of a dog: the lower, the worse a mistake it can be
    index: int  # position in the split; breaks ties, so the first seen wins
    label: int
    score: float
    name: str
    image: np.ndarray


class _Candidates:
    """The images that may be a split's most confident mistakes, kept during its one pass.

    Which images are mistakes depends on the threshold, chosen on val after
    the pass; but whatever it is, the worst mistakes are the cats with the
    lowest scores and the dogs with the highest. So the `keep` lowest-scored
    cats and the `keep` highest-scored dogs, with their names and images,
    always hold the `keep` worst mistakes, and no shard is read again.
    """

    def __init__(self, keep=MISTAKES_KEPT):
        self.keep = keep
        self.pools = {1: [], 0: []}  # label -> candidates, best kept first

    def add(self, scores, labels, names, images, first):
        """Offer one batch; `first` is the position of its first image in the split."""
        for label, key in ((1, scores), (0, -scores)):
            self.pools[label] = _smallest(
                self.pools[label], key, np.flatnonzero(labels == label), self.keep,
                lambda i: _Candidate(float(key[i]), first + int(i), label, float(scores[i]), names[i],
                                     images[i].copy()))

    def worst(self, threshold):
        """(mistakes, images): the misclassified images at `threshold`, farthest from their label first.

        mistakes: dicts {"name", "label", "score", "index"} as metrics.json
        lists them; images: uint8 (len(mistakes), H, W, 3).
        """
        wrong = [c for pool in self.pools.values() for c in pool if (c.score > threshold) != (c.label == 1)]
        wrong = sorted(wrong, key=lambda c: (-abs(c.score - c.label), c.index))[:self.keep]
        mistakes = [{"name": c.name, "label": c.label, "score": c.score, "index": c.index} for c in wrong]
        return mistakes, np.array([c.image for c in wrong], dtype=np.uint8)


def _smallest(pool, keys, rows, keep, entry):
    """The `keep` smallest of `pool` and of `entry(i)` for each of `rows`, by (key, position).

    `pool` holds entries whose first two fields are their key and position,
    smallest first; `keys[i]` is row i's key. A row must be strictly smaller
    than the pool's largest to get in once it is full (ties go to the first
    seen), so only the rows that can stay are copied.
    """
    if len(pool) == keep:
        rows = rows[keys[rows] < pool[-1][0]]
    rows = rows[np.argsort(keys[rows], kind="stable")][:keep]
    return heapq.nsmallest(keep, pool + [entry(i) for i in rows], key=lambda c: c[:2])


class _MulticlassCandidates:
    """The most confident wrong predictions of a split (N > 2), kept during its one pass.

    With no threshold, whether an image is a mistake is known as it is
    scored, so only the `keep` mistakes of highest top probability so far
    (and their images) are held; ties go to the first seen.
    """

    def __init__(self, keep=MISTAKES_KEPT):
        self.keep = keep
        self.pool = []  # (-top probability, index, label, predicted, probability of label, name, image)

    def add(self, probabilities, labels, names, images, first):
        predicted = np.argmax(probabilities, axis=1)
        confidence = probabilities[np.arange(len(labels)), predicted]
        self.pool = _smallest(
            self.pool, -confidence, np.flatnonzero(predicted != labels), self.keep,
            lambda i: (-float(confidence[i]), first + int(i), int(labels[i]), int(predicted[i]),
                       float(probabilities[i, labels[i]]), names[i], images[i].copy()))

    def worst(self):
        """(mistakes, images): most confident first; mistakes are the dicts metrics.json lists."""
        mistakes = [{"name": name, "label": label, "predicted": predicted, "probability": -key,
                     "label_probability": label_p, "index": index}
                    for key, index, label, predicted, label_p, name, _ in self.pool]
        return mistakes, np.array([c[-1] for c in self.pool], dtype=np.uint8)
