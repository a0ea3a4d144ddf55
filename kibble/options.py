"""Options and callbacks several commands share, declared once (as rasterio's rio/options.py does).

Choices and defaults come from the library's own constants, so a new model,
fit or compression appears on the command line without an edit here.
"""
import math
import os

import click

from shards import storage
from shards.errors import UserError
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


def training_minutes(ctx, param, value):
    """--minutes 20 / 90s / 20m / 1.5h -> minutes (float), or None when not given."""
    from shards.errors import UserError
    from train.budget import parse_minutes

    if value is None:
        return None
    try:
        return parse_minutes(value)
    except UserError as exc:
        raise click.BadParameter(str(exc).replace("minutes must be", "must be").replace("minutes=", "")) from None


def finite(ctx, param, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number. Received: {value}")
    return value


class NumberOrWord(click.ParamType):
    """A whole number from `low` (to `high`, if given), or `word` (any case), which stands for `meaning`.

    `unit` names what is counted, in the message for anything else.
    """

    def __init__(self, word, meaning, low, high=None, unit="number"):
        self.word, self.meaning, self.low, self.high, self.unit = word, meaning, low, high, unit
        self.name = f"integer|{word}"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == self.word:
            return self.meaning
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < self.low or (self.high is not None and number > self.high):
            span = f"from {self.low} to {self.high}" if self.high is not None else f"(at least {self.low})"
            self.fail(f"must be a whole number of {self.unit} {span}, or {self.word}. Received: {value!r}",
                      param, ctx)
        return number


class FolderOrURL(click.Path):
    """A folder path, or an fsspec URL (s3://bucket/shards, gs://..., memory://...) passed on as is.

    file:// URLs become the local path they name. A URL carrying credentials
    is refused: they belong in the environment or a config file.
    """

    name = "folder_or_url"

    def __init__(self):
        super().__init__(file_okay=False)

    def convert(self, value, param, ctx):
        value = storage.local_path(value)
        if storage.is_url(value):
            return storage.check_url(value)  # a UserError: one `Error:` line from the group
        return super().convert(value, param, ctx)


class LocalFolder(click.Path):
    """A folder that must be on the local file system: run directories and report folders.

    Keras writes its .keras checkpoints and TensorBoard its event files with
    local file calls, and a run holds an OS file lock; a URL is refused in
    one line saying what to do instead (docs/architecture.md).
    """

    name = "local_folder"

    def __init__(self):
        super().__init__(file_okay=False)

    def convert(self, value, param, ctx):
        value = storage.local_path(value)
        if storage.is_url(value):  # a UserError, not click's usage text: one `Error:` line
            raise UserError(f"{_name(param)} must be a local folder: run directories hold Keras checkpoints, "
                            "TensorBoard logs and a file lock, which need a local disk. Use a local folder and "
                            "copy it to storage afterwards (e.g. `aws s3 sync runs/ s3://bucket/runs/`). "
                            f"Received: {_name(param)}={storage.public(value)}")
        return super().convert(value, param, ctx)


class RunFolder(FolderOrURL):
    """A run directory or runs folder: a local folder, or a URL whose run lives in a local working copy
    kept in step with it (train.remote_run; one writer per run at a URL, as a URL cannot be locked)."""

    name = "run_folder"


def input_location(ctx, param, value):
    """ingest's INPUT: a local folder or zip (file:// too), or a URL without credentials in it."""
    value = storage.local_path(value)
    return storage.check_url(value) if storage.is_url(value) else value


def _name(param):
    return param.opts[0] if param is not None and param.opts else "the folder"


def data_access(ctx, param, value):
    """--cache: DIR (the cache root) or `none` (stream); kept as text, read by access_from."""
    if value is not None and value.strip().lower() != "none" and storage.is_url(value):
        raise UserError(f"--cache must be a local folder or `none`. Received: --cache={storage.public(value)}")
    return value


def access_from(cache, stream):
    """The shards.storage.Access of the --cache and --stream options."""
    return storage.Access.from_option(cache, stream)


# -- options ------------------------------------------------------------------------------------


def data_option(default=DEFAULT_SHARDS, help="Shard folder written by ingest."):
    return click.option("--data", default=default, show_default=default is not None, type=FolderOrURL(),
                        help=help + " A URL (s3://bucket/shards, gs://..., memory://...) reads them from "
                                    "object storage (see --cache, --stream).")


def access_options(command):
    """--cache and --stream: how shards at a URL are read (local folders are read in place)."""
    command = click.option("--stream", is_flag=True,
                           help="With a URL --data: read the shards from storage as needed (ranged reads "
                                "with read-ahead) instead of caching them; for sets larger than the disk.")(command)
    return click.option("--cache", metavar="DIR|none", default=None, callback=data_access,
                        help=f"With a URL --data: local cache of the shards (each checked by sha256 on "
                             f"download, reused afterwards). Default: ${storage.CACHE_ENV}, else "
                             f"~/.cache/kibble; `none` streams (as --stream).")(command)


_RUN_URL_HELP = (" A URL (s3://bucket/runs, memory://...) works through a local working copy under the "
                 "cache root (see --cache) kept in step with it.")


def runs_option(help="Folder holding the run directories.", url=False):
    """--runs; `url`: the command reads runs at a URL through train.remote_run (others refuse one)."""
    return click.option("--runs", "runs_root", default=DEFAULT_RUNS, show_default=True,
                        type=RunFolder() if url else LocalFolder(), help=help + (_RUN_URL_HELP if url else ""))


run_dir_option = click.option("--run-dir", type=RunFolder(), default=None,
                              help="Run directory. Default: RUNS/<model>-<date>-<time>-<microseconds>."
                                   + _RUN_URL_HELP)

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
