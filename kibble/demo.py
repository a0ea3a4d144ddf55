"""`demo`: the whole pipeline on a small made-up data set, in a few minutes.

    <workdir>/images/train/   generated cat.N.jpg / dog.N.jpg (unless `source` is given)
    <workdir>/shards/         ingest's output
    <workdir>/runs/           train's run directories; evaluate writes report.md into the run

It calls the very functions the command line calls (`ingest`, `train`,
`evaluate_run`), so a demo that works says the installed toolkit works.
"""
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass

from evaluate import evaluate_run
from ingest import IngestSettings, ingest
from ingest.synthetic import make_demo_images
from shards.errors import UserError
from train.run import TrainSettings, train

IMAGES_MARKER = "demo-images.json"
_GENERATED = re.compile(r"^(cat|dog)\.\d+\.jpg$")
# Images per shard: small, so that even the demo's few hundred images make several shards.
SHARD_SIZE = 256


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs, chosen so the whole demo takes under 5 minutes on 2 cores."""

    # Generated pictures per class (ignored when a source folder is given).
    per_class: int = 750
    # Stored image size (height, width): small enough to train fast on a CPU,
    # large enough to keep the cats' pointed ears visible.
    size: tuple = (48, 64)
    # Validation and test shares of each class.
    val: float = 0.15
    test: float = 0.15
    # Model and schedule. The default residual net stays near chance for two or
    # three epochs, then learns the shapes; 18 epochs (with the recipe's cosine
    # decay) take it well past 85% test accuracy on the generated pictures.
    model: str = "kibble"
    epochs: int = 18
    # None: the model's recipe (train.models.RECIPES).
    lr: float = None
    batch_size: int = None
    seed: int = 0


def run_demo(workdir="demo", source=None, settings=DemoSettings(), progress=True, log=None):
    """Generate (or take) images, then ingest, train and evaluate them.

    Args:
        workdir: folder for everything the demo writes; reused when it exists.
        source: an image folder to use instead of generated pictures (any
            input `ingest` accepts, e.g. Kaggle's train/).
        settings: a DemoSettings.
        progress: progress bars on stderr.
        log: callable taking one line of text; default prints to stderr.

    Returns:
        dict with "images" (the input folder), "shards", "run_dir", "report"
        (path of report.md), "test_accuracy", "threshold", "seconds" (per
        stage and "total").

    Raises:
        UserError: `source` is given but is not an existing folder or file.
    """
    say = log or _print
    if source is not None and not os.path.exists(source):
        raise UserError(f"no image folder at {source}: name an existing folder (or omit it to generate one)")
    os.makedirs(workdir, exist_ok=True)
    seconds = {}
    with _timed(seconds, "total"):
        with _timed(seconds, "images"):
            images = _images(workdir, source, settings, say)
        with _timed(seconds, "ingest"):
            shards, counts = _ingest(images, workdir, settings, progress, say)
        with _timed(seconds, "train"):
            run_dir = _train(shards, counts, workdir, settings, progress, say)
        with _timed(seconds, "evaluate"):
            metrics = _evaluate(run_dir, counts, progress)
    return _finish(images, shards, run_dir, metrics, seconds, say)


def _print(line):
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _timed(seconds, stage):
    """seconds[stage] = the wall time of the block."""
    started = time.monotonic()
    yield
    seconds[stage] = time.monotonic() - started


def _images(workdir, source, settings, say):
    """The folder to ingest: `source`, or the generated pictures."""
    if source is None:
        return _demo_images(os.path.join(workdir, "images"), settings, say)
    say(f"demo: using the images in {source}")
    return source


def _ingest(images, workdir, settings, progress, say):
    """(shard folder, {split: image count}) of `images` ingested into workdir/shards."""
    shards = os.path.join(workdir, "shards")
    ingest_settings = IngestSettings(size=tuple(settings.size), val=settings.val, test=settings.test,
                                     seed=settings.seed, shard_size=SHARD_SIZE)
    say(f"demo: ingest {images} -> {shards}")
    ingested = ingest(images, shards, ingest_settings, progress=progress)
    counts = {split: info["count"] for split, info in ingested["splits"].items()}
    if not counts.get("train") or not counts.get("val"):
        raise UserError(f"{images} gave too few images for a train and a val split ({counts}); "
                        "the demo needs at least a few dozen per class")
    return shards, counts


def _train(shards, counts, workdir, settings, progress, say):
    """The run directory of a new run on every train and val image."""
    train_settings = TrainSettings(data=shards, model=settings.model, train_size=counts["train"],
                                   val_size=counts["val"], epochs=settings.epochs, lr=settings.lr,
                                   batch_size=settings.batch_size, seed=settings.seed)
    say(f"demo: train {settings.model} for {settings.epochs} epochs on {counts['train']} images "
        f"({'x'.join(map(str, settings.size))}), validate on {counts['val']}")
    return train(train_settings, runs_root=os.path.join(workdir, "runs"), progress=progress)["run_dir"]


def _evaluate(run_dir, counts, progress):
    """metrics of the run on val, and on test when the data has a test split."""
    splits = ("val", "test") if counts.get("test") else ("val",)
    return evaluate_run(run_dir, splits=splits, progress=progress)


def _finish(images, shards, run_dir, metrics, seconds, say):
    """Say how it went and where the report is; the result of `run_demo`."""
    split_name = "test" if "test" in metrics["splits"] else "val"
    scored = metrics["splits"][split_name]
    threshold = metrics["threshold"]
    report = os.path.join(metrics["out"], "report.md")
    say(f"demo: finished in {seconds['total']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items() if k != 'total')})")
    say(f"demo: {split_name} accuracy {scored['accuracy']:.3f} on {scored['count']} images "
        f"at threshold {threshold['value']:.2f} (chosen on {threshold['chosen_on']})")
    say(f"demo: report {report}")
    return {"images": images, "shards": shards, "run_dir": run_dir, "report": report,
            "test_accuracy": scored["accuracy"] if split_name == "test" else None,
            "threshold": threshold["value"], "seconds": {k: round(v, 2) for k, v in seconds.items()}}


def _demo_images(folder, settings, say):
    """Generate the demo pictures into `folder`, unless it already holds the same ones."""
    marker = os.path.join(folder, IMAGES_MARKER)
    wanted = {"per_class": settings.per_class, "seed": settings.seed}
    train_dir = os.path.join(folder, "train")
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == wanted:
                say(f"demo: reusing the {2 * settings.per_class} generated images in {train_dir}")
                return train_dir
        os.remove(marker)
    say(f"demo: drawing {settings.per_class} cats and {settings.per_class} dogs into {train_dir}")
    if os.path.isdir(train_dir):  # an earlier, different set: leave none of its pictures behind
        for name in os.listdir(train_dir):
            if _GENERATED.match(name):
                os.remove(os.path.join(train_dir, name))
    make_demo_images(folder, per_class=settings.per_class, seed=settings.seed)
    with open(marker, "w") as f:
        json.dump(wanted, f)
    return train_dir
