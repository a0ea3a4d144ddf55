"""`predict`: score image files with a trained run, one result per file.

Each file is decoded by `shards.image.load_image` with the run's own image
size and fit, exactly as ingest prepared the training images, and fed to the
run's best.keras in batches. Files are found lazily and only one batch of
decoded images is held at a time, so a folder of any size streams through.

Two classes (the tutorial's sigmoid): each result is p_cat, the probability
of class index 1, and a label by the run's threshold, as it always was. More
classes (a softmax): the most probable class and its probability, the K best
(class, probability) pairs and the whole distribution.

`tta` scores each image as `evaluate --tta` does (the mean over it and its
mirror, evaluate.inference.model_outputs, the one implementation of both),
and a two-class label then uses the threshold `evaluate --tta` chose on
validation: evaluate records one threshold per way of scoring.

One file never stops the others: a file that is missing, not a regular file
(a FIFO or device named .jpg would block or never end, so only regular files
are opened), a symlink loop, or that the decoder cannot handle in any way,
and a folder that cannot be searched, each become one result with the reason.
"""
import csv
import errno
import io
import json
import os
import stat

import numpy as np

from evaluate.inference import FLIP, model_outputs, scoring
from evaluate.run import DEFAULT_THRESHOLD, _load_model, recorded_thresholds, takes_size
from shards.errors import UserError
from shards.format import sha256_file
from shards.image import BadImage, is_image_name, load_image
from train.rundir import METRICS, RunDir

# Class names of a run whose config.json names none (trained before classes were recorded).
DOGS_VS_CATS = ["dog", "cat"]
# The fields of one two-class result, in the order CSV output gives them.
FIELDS = ("file", "p_cat", "label", "error")


def run_classes(run_dir):
    """The class names of a run, in index order (Dogs vs. Cats for a run that recorded none)."""
    return RunDir(run_dir).config().get("classes") or DOGS_VS_CATS


def multiclass_fields(classes, top_k=1):
    """CSV columns of a result with more than two classes: the best class and its probability, the
    next best up to `top_k` (label_2, probability_2, ...), then one p_<class> column per class."""
    ranked = [name for k in range(2, top_k + 1) for name in (f"label_{k}", f"probability_{k}")]
    return ("file", "label", "probability", *ranked, *(f"p_{name}" for name in classes), "error")


def run_threshold(run_dir, tta=False):
    """(threshold, where it came from): the val threshold `evaluate` chose for this way of scoring.

    Plain scores take the threshold of plain `evaluate`, TTA scores (`tta`)
    that of `evaluate --tta`, both recorded in the run's metrics.json (see
    evaluate.run.recorded_thresholds). When only the other way's is there it
    is used, and the origin says so (the two are close, 0.5 may be far
    off); with neither, 0.5.
    """
    run = RunDir(run_dir)
    try:
        recorded = recorded_thresholds(run.metrics())
    except (OSError, UserError):
        recorded = {}
    command = "evaluate --tta" if tta else "evaluate"
    wanted = scoring(tta)
    if wanted in recorded:
        entry = recorded[wanted]
        return float(entry["value"]), (f"chosen on {entry['chosen_on']} by `{command}` ({run.file(METRICS)})"
                                       + _stale(run, entry, command))
    if recorded:  # only the other way's
        way, entry = next(iter(recorded.items()))
        other = "evaluate --tta" if way == FLIP else "evaluate"
        return float(entry["value"]), (f"chosen on {entry['chosen_on']} by `{other}` ({run.file(METRICS)}); "
                                       f"`{command}` records the one for these scores" + _stale(run, entry, command))
    return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD} (no usable {METRICS} in {run_dir}: run `{command}`)"


def _stale(run, entry, command):
    """"" or a warning that the threshold was chosen for another model file than the run's best.keras now.

    `train --resume --epochs N` can replace best.keras after `evaluate`
    chose a threshold for the one before (and `evaluate --checkpoint last`
    chooses one for last.keras); the threshold is still used (it is nearer
    than 0.5), but the user is told. An entry from before
    metrics.json named its checkpoint's sha256, or a missing model file
    (reported by predict itself), gives "".
    """
    recorded = entry.get("checkpoint_sha256")
    path = run.checkpoint("best")  # the model predict scores with
    if not isinstance(recorded, str) or not os.path.isfile(path):
        return ""
    try:
        if sha256_file(path) == recorded:
            return ""
    except OSError:
        return ""
    return (f"; WARNING: {os.path.basename(path)} has changed since (its sha256 differs from the one the threshold "
            f"was chosen for): run `{command}` again")


def expand_paths(paths):
    """Yield (path, None) for every file to predict, (path, reason) for a folder that cannot be searched.

    Each path that is not a folder is yielded as given (a missing one too, so
    that it is reported like any unreadable file). Folders are searched
    recursively, each folder's files before its sub-folders, both in sorted
    order; files count as images when they end in .jpg, .jpeg or .png (any
    case). Symlinked folders are followed, but within one given path each real
    folder is searched once: a link back to a folder being searched (a loop),
    a second link to a folder already searched and an unreadable folder are
    each yielded with the reason instead of searched.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            yield from _search(path)
        else:
            yield path, None


def _search(top):
    searched = {}  # (device, inode) of each folder searched -> the path it was searched as
    stack = [(top, ())]  # (folder, keys of the folders above it)
    while stack:
        folder, above = stack.pop()
        try:
            info = os.stat(folder)
            key = (info.st_dev, info.st_ino)
        except OSError as exc:  # removed, or a link gone bad, since it was listed
            yield folder, f"unreadable folder: {exc.strerror or exc}"
            continue
        if key in searched:
            how = "a symlink loop: it leads back to" if key in above else "the same folder (through a symlink) as"
            yield folder, f"not searched: {how} {searched[key]}"
            continue
        searched[key] = folder
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            yield folder, f"unreadable folder: {exc.strerror or exc}"
            continue
        subfolders = []
        for entry in entries:
            if _is_folder(entry):
                subfolders.append((entry.path, above + (key,)))
            elif is_image_name(entry.name):
                yield entry.path, None
        stack.extend(reversed(subfolders))


def _is_folder(entry):
    try:
        return entry.is_dir()  # follows a symlink
    except OSError:  # a symlink loop or an unreadable link: not a folder to enter; reported if it names an image
        return False


def predict(paths, run_dir, batch_size=64, threshold=None, top_k=1, tta=False):
    """Load the run's model, then return an iterator of one result per image file, in input order.

    Args:
        paths: a file or folder, or an iterable of them (folders are expanded
            recursively, see `expand_paths`).
        run_dir: a run directory made by `train`; its best.keras is used.
        batch_size: images decoded and scored together.
        threshold: two classes: label "cat" when p_cat is above it; None
            takes the run's validation threshold for this way of scoring
            (see `run_threshold`).
            Unused with more classes (the most probable class is the label).
        top_k: more than two classes: the number of best (class,
            probability) pairs in each result (at most the number of classes).
        tta: score each image as the mean of the model's outputs on it and
            on its mirror, as `evaluate --tta` does (evaluate.inference);
            twice the model's time. With threshold None, the threshold is
            then the one `evaluate --tta` chose.

    Returns:
        An iterator of dicts. Two classes: {"file": str, "p_cat": float or
        None, "label": "cat" / "dog" or None, "error": None or the reason the
        file (or a folder) could not be used}. More classes: {"file",
        "label": the most probable class, "probability": its probability,
        "top": [[class, probability], ...] the top_k best, "probabilities":
        {class: probability} for every class, "error"}. A file that cannot
        be decoded, for any reason, is one result with an error (the other
        fields None, "top" empty); it never stops the others.

    Raises:
        UserError: at the call, before any result: no such run, or its model
            is missing, damaged or takes images of another size than the
            run's config says; while iterating: the model's output does not
            fit (one probability per image, or one per class).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size!r}")
    if int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1. Received: top_k={top_k!r}")
    if not os.path.isdir(run_dir):
        raise UserError(f"no run directory at {run_dir}: run `train` first, or name an existing run")
    run = RunDir(run_dir)
    config = run.config()
    size, fit = tuple(config["image_size"]), config["fit"]
    classes = config.get("classes") or DOGS_VS_CATS
    if len(classes) < 2:
        raise UserError(f"{run.file('config.json')} names {len(classes)} class; predicting needs at least two")
    if threshold is None and len(classes) == 2:
        threshold, _ = run_threshold(run_dir, tta)
    model_path = run.checkpoint("best")
    model = _load_model(model_path)
    found = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else None
    if found is None or not takes_size(found, (*size, 3)):
        raise UserError(f"the model {model_path} takes inputs of shape {found}, but {run_dir}/config.json "
                        f"says images are {size[0]}x{size[1]}; the run directory is inconsistent: train it again")
    score = _SigmoidScorer(threshold, classes) if len(classes) == 2 else \
        _SoftmaxScorer(classes, min(int(top_k), len(classes)))
    return _results(model, expand_paths(paths), size, fit, int(batch_size), score, bool(tta))


def _results(model, found, size, fit, batch_size, score, tta):
    batch = np.empty((batch_size, *size, 3), dtype=np.uint8)
    pending = []  # (result, row of `batch` or None) for this batch's files, in input order
    filled = 0
    for path, problem in found:
        image, problem = (None, problem) if problem else _decoded(path, size, fit)
        if problem:
            pending.append(({"file": path, **score.empty, "error": problem}, None))
            continue
        batch[filled] = image
        pending.append(({"file": path, **score.empty, "error": None}, filled))
        filled += 1
        if filled == len(batch):
            yield from _scored(model, batch, pending, score, tta)
            pending, filled = [], 0
    if pending:
        yield from _scored(model, batch[:filled], pending, score, tta)


def _decoded(path, size, fit):
    """(image, None), or (None, the reason `path` cannot be used)."""
    problem = _not_a_regular_file(path)
    if problem:
        return None, problem
    try:
        return load_image(path, size=size, fit=fit), None
    except BadImage as exc:
        return None, str(exc)
    except MemoryError:  # the machine's problem, not this file's: stop (KeyboardInterrupt is no Exception)
        raise
    except Exception as exc:  # a decoder that gives up on a variant it knows (NotImplementedError), or a bug in it
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return None, f"cannot decode: {type(exc).__name__}" + (f": {detail}" if detail else "")


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_a_regular_file(path):
    """None for a regular file (after following links), else why it is not read.

    Checked before opening: opening a FIFO blocks until someone writes to it,
    and reading a device may never end.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        loop = " (a symlink loop)" if exc.errno == errno.ELOOP else ""
        return f"unreadable: {exc.strerror or exc}{loop}"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"not read: {kind}, not a regular file"


class _SigmoidScorer:
    """Two classes: the sigmoid's probability of class index 1 (cat for Dogs vs. Cats) and a label by threshold."""

    empty = {"p_cat": None, "label": None}

    def __init__(self, threshold, classes):
        self.threshold, self.classes = threshold, classes

    def scores(self, output, rows):
        scores = output.reshape(-1)
        if len(scores) != rows:
            raise UserError(f"the model outputs {len(scores)} values for {rows} images; predict needs "
                            "one sigmoid probability of cat per image")
        return scores

    def fields(self, p_cat):
        p_cat = float(p_cat)
        return {"p_cat": p_cat, "label": self.classes[int(p_cat > self.threshold)]}


class _SoftmaxScorer:
    """More classes: the softmax's distribution, its best class and its `top_k` best (class, probability)."""

    empty = {"label": None, "probability": None, "top": [], "probabilities": None}

    def __init__(self, classes, top_k):
        self.classes, self.top_k = classes, top_k

    def scores(self, output, rows):
        if output.shape != (rows, len(self.classes)):
            raise UserError(f"the model outputs shape {output.shape} for {rows} images; the run names "
                            f"{len(self.classes)} classes, so predict needs one probability per class per image")
        return output

    def fields(self, probabilities):
        # A stable sort: tied classes keep their index order.
        best = np.argsort(-probabilities, kind="stable")[:self.top_k]
        top = [[self.classes[i], float(probabilities[i])] for i in best]
        return {"label": top[0][0], "probability": top[0][1], "top": top,
                "probabilities": {name: float(p) for name, p in zip(self.classes, probabilities)}}


def _scored(model, images, pending, score, tta):
    output = model_outputs(model, images, tta) if len(images) else np.empty((0, 0))
    scores = score.scores(output, len(images)) if len(images) else ()
    for result, row in pending:
        if row is not None:
            result.update(score.fields(scores[row]))
        yield result


def prediction_writer(fmt, echo, classes=None, top_k=1):
    """A function writing one result per call through `echo` (click.echo's signature), the ending when
    called with None. fmt: "table" (aligned columns), "csv" (with a header) or "json" (one array,
    written as it goes); whatever stops the run, calling it with None leaves a complete document.
    `classes`: the run's class names; None or two give the two-class columns (p_cat, label)."""
    if classes is not None and len(classes) > 2:
        return _multiclass_writer(fmt, echo, classes, min(top_k, len(classes)))
    started = False

    def table(result):
        nonlocal started
        if result is None:
            return
        if not started:
            echo(f"{'p_cat':>7}  {'label':<5}  file")
            started = True
        p_cat = "-" if result["p_cat"] is None else f"{result['p_cat']:.4f}"
        error = f"  ERROR: {result['error']}" if result["error"] else ""
        echo(f"{p_cat:>7}  {result['label'] or '-':<5}  {result['file']}{error}")

    def csv_row(result):
        return {**result, "p_cat": "" if result["p_cat"] is None else f"{result['p_cat']:.6f}"}

    return {"table": table, "csv": _csv_writer(echo, FIELDS, csv_row), "json": _json_writer(echo)}[fmt]


def _multiclass_writer(fmt, echo, classes, top_k):
    started = False
    width = max(5, *(len(name) for name in classes))
    columns = multiclass_fields(classes, top_k)

    def table(result):
        nonlocal started
        if result is None:
            return
        if not started:
            heads = [f"{'p' if k == 1 else f'p_{k}':>7}  {'label' if k == 1 else f'label_{k}':<{width}}"
                     for k in range(1, top_k + 1)]
            echo("  ".join(heads) + "  file")
            started = True
        pairs = result["top"] or [["-", None]]
        cells = [f"{'-' if p is None else f'{p:.4f}':>7}  {name:<{width}}" for name, p in pairs]
        cells += [f"{'-':>7}  {'-':<{width}}"] * (top_k - len(cells))
        error = f"  ERROR: {result['error']}" if result["error"] else ""
        echo("  ".join(cells) + f"  {result['file']}{error}")

    return {"table": table, "csv": _csv_writer(echo, columns, lambda result: _csv_row(result, classes)),
            "json": _json_writer(echo)}[fmt]


def _csv_writer(echo, fieldnames, row_of):
    """CSV with a header, one row per result; the header alone when there is none."""
    started = False

    def as_csv(result):
        nonlocal started
        line = io.StringIO()
        writer = csv.DictWriter(line, fieldnames=fieldnames, lineterminator="\n")
        if not started:
            writer.writeheader()
            started = True
        if result is not None:
            writer.writerow(row_of(result))
        echo(line.getvalue(), nl=False)

    return as_csv


def _json_writer(echo):
    """One JSON array, written as it goes and closed by the call with None."""
    started = False

    def as_json(result):
        nonlocal started
        if result is None:
            echo("\n]" if started else "[]")
            return
        echo(("[\n  " if not started else ",\n  ") + json.dumps(result), nl=False)
        started = True

    return as_json


def _csv_row(result, classes):
    """One CSV row of a result with more than two classes; empty cells where the file failed."""
    row = {"file": result["file"], "error": result["error"]}
    for k, (name, p) in enumerate(result["top"], start=1):
        suffix = "" if k == 1 else f"_{k}"
        row.update({f"label{suffix}": name, f"probability{suffix}": f"{p:.6f}"})
    for name, p in (result["probabilities"] or {}).items():
        row[f"p_{name}"] = f"{p:.6f}"
    return row
