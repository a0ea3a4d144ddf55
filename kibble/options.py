"""Options and callbacks several commands share, declared once (as rasterio's rio/options.py does).

Choices and defaults come from the library's own constants, so a new model,
fit or compression appears on the command line without an edit here.
"""
import math
import os

import click

from shards.image import DEFAULT_SIZE, parse_size
from ingest.plan import share_problem

DEFAULT_SHARDS = os.path.join("data", "shards")
DEFAULT_RUNS = "runs"


# -- callbacks: turn a bad value into click's "Invalid value for '--x'" --------------------------


def size(ctx, param, value):
    """HEIGHTxWIDTH -> (height, width)."""
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def share(ctx, param, value):
    """--val/--test: a fraction in [0, 1) or a whole count; never NaN, infinite or negative."""
    problem = share_problem(value)
    if problem:
        raise click.BadParameter(f"{problem}. Received: {value!r}")
    return value


def class_list(ctx, param, value):
    """--classes a,b,c -> ("a", "b", "c"); None when not given."""
    if value is None:
        return None
    names = tuple(name.strip() for name in value.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise click.BadParameter(f"must be distinct class names separated by commas, e.g. dog,cat. "
                                 f"Received: {value!r}")
    return names


def checkpoint_interval(ctx, param, value):
    """--checkpoint-every 10m / 90s / 1h / 500batches / off -> train.run.CheckpointEvery."""
    from shards.errors import UserError
    from train.run import parse_checkpoint_every

    try:
        return parse_checkpoint_every(value)
    except UserError as exc:
        raise click.BadParameter(str(exc).replace("checkpoint_every must be", "must be")
                                 .replace("checkpoint_every=", "")) from None


def finite(ctx, param, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number. Received: {value}")
    return value


# -- options ------------------------------------------------------------------------------------


def data_option(default=DEFAULT_SHARDS, help="Shard folder written by ingest."):
    return click.option("--data", default=default, show_default=default is not None,
                        type=click.Path(file_okay=False), help=help)


def runs_option(help="Folder holding the run directories."):
    return click.option("--runs", "runs_root", default=DEFAULT_RUNS, show_default=True,
                        type=click.Path(file_okay=False), help=help)


run_dir_option = click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                              help="Run directory. Default: RUNS/<model>-<date>-<time>-<microseconds>.")

size_option = click.option("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", show_default=True,
                           callback=size, help="Image size HEIGHTxWIDTH stored in the shards.")


def share_option(name, what):
    return click.option(f"--{name}", default=0.1, show_default=True, type=float, callback=share,
                        help=f"{what} share: a fraction of each class (rounded half up per class), "
                             "or an exact count (>= 1) split across classes in proportion.")


def seed_option(max_seed, help):
    return click.option("--seed", default=0, show_default=True, type=click.IntRange(0, max_seed), help=help)


def batch_size_option(default, help=None):
    return click.option("--batch-size", type=click.IntRange(min=1), default=default, show_default=True, help=help)
