"""`predict`: score image files with a trained run, one result per file.

Each file is decoded by `ingest.image.load_image` with the run's own image
size and fit, exactly as ingest prepared the training images, and fed to the
run's best.keras in batches. Files are found lazily and only one batch of
decoded images is held at a time, so a folder of any size streams through.
"""
import json
import os

import numpy as np

from evaluate.run import DEFAULT_THRESHOLD, METRICS_NAME, _load_model
from ingest.image import BadImage, is_image_name, load_image
from shards.errors import UserError
from train.rundir import BEST, read_config

LABELS = {1: "cat", 0: "dog"}


def run_threshold(run_dir):
    """(threshold, where it came from): the run's val threshold from metrics.json, else 0.5."""
    path = os.path.join(run_dir, METRICS_NAME)
    try:
        with open(path) as f:
            threshold = json.load(f)["threshold"]
        return float(threshold["value"]), f"chosen on {threshold['chosen_on']} ({path})"
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD} (no usable {METRICS_NAME} in {run_dir}: run `evaluate`)"


def expand_paths(paths):
    """Yield files: each path that is not a folder as given, and every image under each folder.

    Folders are walked recursively in sorted order; their files count as images
    when they end in .jpg, .jpeg or .png (any case). A path that does not
    exist is yielded as is, so that it is reported like any unreadable file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        path = os.fspath(path)
        if not os.path.isdir(path):
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if is_image_name(name):
                    yield os.path.join(root, name)


def predict(paths, run_dir, batch_size=64, threshold=None):
    """Yield one result per image file, in input order.

    Args:
        paths: a file or folder, or an iterable of them (folders are expanded
            recursively, see `expand_paths`).
        run_dir: a run directory made by `train`; its best.keras is used.
        batch_size: images decoded and scored together.
        threshold: label "cat" when p_cat is above it; None takes the run's
            validation threshold (see `run_threshold`).

    Yields:
        dicts {"file": str, "p_cat": float or None, "label": "cat" / "dog" or
        None, "error": None or the reason the file could not be used}.

    Raises:
        UserError: no such run, or its model is missing, damaged or takes
            images of another size than the run's config says.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size!r}")
    if not os.path.isdir(run_dir):
        raise UserError(f"no run directory at {run_dir}: run `train` first, or name an existing run")
    config = read_config(run_dir)
    size, fit = tuple(config["image_size"]), config["fit"]
    if threshold is None:
        threshold, _ = run_threshold(run_dir)
    model_path = os.path.join(run_dir, BEST)
    model = _load_model(model_path)
    found = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else None
    if found != (*size, 3):
        raise UserError(f"the model {model_path} takes inputs of shape {found}, but {run_dir}/config.json "
                        f"says images are {size[0]}x{size[1]}; the run directory is inconsistent: train it again")

    batch = np.empty((int(batch_size), *size, 3), dtype=np.uint8)
    pending = []  # (result, row of `batch` or None) for this batch's files, in input order
    filled = 0
    for path in expand_paths(paths):
        try:
            batch[filled] = load_image(path, size=size, fit=fit)
        except BadImage as exc:
            pending.append(({"file": path, "p_cat": None, "label": None, "error": str(exc)}, None))
            continue
        pending.append(({"file": path, "p_cat": None, "label": None, "error": None}, filled))
        filled += 1
        if filled == len(batch):
            yield from _scored(model, batch, pending, threshold)
            pending, filled = [], 0
    if pending:
        yield from _scored(model, batch[:filled], pending, threshold)


def _scored(model, images, pending, threshold):
    scores = np.asarray(model.predict_on_batch(images)).reshape(-1) if len(images) else np.empty(0)
    if len(scores) != len(images):
        raise UserError(f"the model outputs {len(scores)} values for {len(images)} images; predict needs "
                        "one sigmoid probability of cat per image")
    for result, row in pending:
        if row is not None:
            p_cat = float(scores[row])
            result.update(p_cat=p_cat, label=LABELS[int(p_cat > threshold)])
        yield result
