"""`check-outside`: score a trained run on labelled photos from another source, as every release must.

The photos are found as `ingest` finds images (ingest.sources.discover:
class folders at any depth, pre-split folders, `<class>.<n>.jpg` names, or
a labels file), each decoded and scored by `predict` (kibble/predict.py:
the run's own size and fit, as ingest prepared its training images, and
evaluate.inference for the model's outputs, `--tta` included), with the
threshold `evaluate` chose on validation for this model file (two classes)
or the most probable class (more). The figures and files are
evaluate/outside.py's. A photo that cannot be decoded is skipped and
listed, as are the files ingest would skip (not an image, outside a class
folder); photos of a class the run does not know are a UserError.
"""
import collections
import os
import time

from evaluate.outside import OutsideScores, outside_document, recorded_threshold, write_outside
from ingest.plan import class_order
from ingest.sources import discover
from kibble.predict import predict, run_classes
from shards.errors import UserError
from shards.format import sha256_file
from shards.progress import Progress
from train.rundir import METRICS, RunDir


def check_outside(photos, run_dir, out=None, tta=False, min_accuracy=None, batch_size=64, labels=None,
                  progress=True):
    """Score `run_dir`'s best.keras on the labelled photos under `photos`; write outside.json and its report.

    Args:
        photos: a local folder of labelled photos (one sub-folder per class,
            named as the run's classes, or any layout `ingest` reads).
        run_dir: a run directory made by `train`, evaluated by `evaluate`
            (with `tta`, by `evaluate --tta`) since its best.keras last changed.
        out: folder for outside.json, outside.md and figures/; default `run_dir`.
        tta: score each photo as the mean over it and its mirror, at the
            threshold `evaluate --tta` chose.
        min_accuracy: the floor in [0, 1] the accuracy must reach, or None.
        batch_size: photos decoded and scored together.
        labels: a labels file (CSV) naming each photo and its class, as `ingest --labels`.
        progress: draw a progress bar on stderr.

    Returns:
        The outside.json document, plus "out" (not written to the file).

    Raises:
        UserError: no run, no recorded threshold for this model file, photos
            missing or not a local folder, photos of a class the run does not
            know, no photo that could be scored.
    """
    started = time.monotonic()
    if not os.path.isdir(run_dir):
        raise UserError(f"no run directory at {run_dir}: run `train` first, or name an existing run")
    run = RunDir(run_dir)
    config, classes = run.config(), run_classes(run_dir)
    model_path = run.checkpoint("best")
    if not os.path.exists(model_path):
        raise UserError(f"no best.keras in {run_dir}: train (or resume) it until an epoch is finished")
    checkpoint_sha256 = sha256_file(model_path)
    threshold = None
    if len(classes) == 2:
        threshold = recorded_threshold(_metrics(run), checkpoint_sha256, tta, run.file(METRICS))
    source = _discover(photos, labels)
    labelled, skipped = _labelled(source, classes, photos)
    if not labelled:
        raise UserError(f"no photo of the run's classes ({', '.join(classes)}) in {photos}"
                        + (f"; first skipped: {skipped[0]['file']}: {skipped[0]['reason']}" if skipped else ""))

    scores = OutsideScores(classes, None if threshold is None else float(threshold["value"]))
    _score(scores, labelled, skipped, run_dir, threshold, tta, batch_size, progress)
    if scores.count == 0:
        raise UserError(f"none of the {len(labelled)} photos in {photos} could be decoded; first: "
                        f"{skipped[0]['file']}: {skipped[0]['reason']}")
    facts = {"run": os.path.abspath(run_dir), "model": config.get("model"), "checkpoint": os.path.basename(model_path),
             "checkpoint_sha256": checkpoint_sha256, "photos": os.path.abspath(photos), "layout": source.layout,
             "tta": "flip" if tta else None}
    document = outside_document(facts, threshold, scores, skipped, min_accuracy)
    out = out or run_dir
    document["seconds"] = round(time.monotonic() - started, 2)
    document = write_outside(out, document)
    return {**document, "out": out}


def _metrics(run):
    """The run's metrics.json, or None when it is missing or unreadable (the threshold check says what to do)."""
    try:
        return run.metrics()
    except (OSError, UserError):
        return None


def _discover(photos, labels):
    if not os.path.isdir(os.path.expanduser(str(photos))):
        what = "a file, not a folder" if os.path.exists(photos) else "not found"
        raise UserError(f"outside photos {photos}: {what}; give a local folder with one sub-folder per class "
                        "(e.g. outside/dog, outside/cat)")
    return discover(photos, labels=labels)


def _labelled(source, classes, photos):
    """([(path, class index)] in name order, [{"file", "reason"}] of what discovery skipped).

    Class names are read as ingest reads them (Cats/dogs folders are cat and
    dog); photos of a class not among `classes` are a UserError, so the
    check never quietly drops part of the set.
    """
    items = source.items
    found = {item.label for item in items if item.label is not None}
    rename, _ = class_order(found)
    index = {name: i for i, name in enumerate(classes)}
    unknown = collections.Counter(rename[item.label] for item in items
                                  if item.label is not None and rename[item.label] not in index)
    if unknown:
        listed = ", ".join(f"{name!r} ({count} photos)" for name, count in sorted(unknown.items()))
        raise UserError(f"{photos} holds photos of classes the run does not know: {listed}; the run's classes "
                        f"are {', '.join(classes)}: rename those folders or move them out")
    root = source.path
    skipped = [{"file": os.path.join(root, entry["name"]), "reason": entry["reason"]}
               for entry in [*source.skipped, *source.excluded]]
    labelled = []
    for item in items:
        path = os.path.join(root, item.name)
        if item.label is None:
            skipped.append({"file": path, "reason": "no class: not in a class folder nor named <class>.<n>"})
        else:
            labelled.append((path, index[rename[item.label]]))
    return labelled, skipped


def _score(scores, labelled, skipped, run_dir, threshold, tta, batch_size, progress):
    """Feed `scores` from `predict`'s results, one batch at a time; a photo it cannot decode goes to `skipped`."""
    waiting = collections.deque()  # (path, label) handed to predict, not yet back

    def paths():
        for path, label in labelled:
            waiting.append((path, label))
            yield path

    results = predict(paths(), run_dir, batch_size=batch_size,
                      threshold=None if threshold is None else float(threshold["value"]), tta=tta)
    bar = Progress(len(labelled), "check-outside", enabled=progress)
    batch = ([], [], [])
    try:
        for result in results:
            path, label = waiting.popleft()
            assert result["file"] == path, (result["file"], path)  # predict gives one result per file, in order
            bar.update(1)
            if result["error"]:
                skipped.append({"file": path, "reason": result["error"]})
                continue
            for column, value in zip(batch, (_score_of(result, scores.classes), label, path)):
                column.append(value)
            if len(batch[0]) >= batch_size:
                scores.update(*batch)
                batch = ([], [], [])
        scores.update(*batch)
    finally:
        bar.close()


def _score_of(result, classes):
    """A predict result's score: p of class 1 (two classes) or the probabilities in class order."""
    if "p_cat" in result:
        return result["p_cat"]
    return [result["probabilities"][name] for name in classes]
