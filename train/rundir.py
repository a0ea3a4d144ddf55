"""Run directories: where one training run keeps everything it produced.

    runs/<model>-<YYYYmmdd-HHMMSS>-<microseconds>/
        config.json    every setting of the run (TrainSettings) plus the data it used
        state.json     the commit point: epochs finished (and batches of the next, after a
                       mid-epoch checkpoint), best epoch, history rows, and the name of
                       the checkpoint that commit wrote
        best.keras     the model of the epoch with the lowest validation loss
        last.keras     the model at the last commit (with optimizer state): the end of an
                       epoch or a mid-epoch checkpoint
        history.csv    one row per finished epoch: epoch (1-based), loss, accuracy,
                       val_loss, val_accuracy, seconds, lr, rss_mb, peak_rss_mb,
                       resumed_at_batch (0, or the batch a resumed epoch restarted at),
                       batches (trained in the epoch: fewer in one a time budget stopped),
                       scale (train --small-first: the training images' scale per side)
        metrics.json   written by `evaluate`
        logs/          TensorBoard event files
        .lock          held (flock) by the one `train` writing the directory
    runs/LATEST        a text file naming the newest run directory (a name inside runs/)

`RunDir` is the one owner of these files; `Runs` is the runs folder (listing,
the newest-run pointer, unique names for new runs).
"""
import contextlib
import csv
import errno
import json
import os
import re
import shutil
import time

from shards.errors import UserError
from shards.fsio import (CRASH_ENV, CRASH_EXIT, DISK_ERRORS, FolderLock,  # noqa: F401 - tests use CRASH_*
                         atomic_path, crash_point, disk_errno, inside, remove_temp_files, write_json_atomic,
                         write_text_atomic)

LATEST = "LATEST"
CONFIG, BEST, LAST, HISTORY, STATE = "config.json", "best.keras", "last.keras", "history.csv", "state.json"
METRICS = "metrics.json"
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr", "rss_mb", "peak_rss_mb",
                  "resumed_at_batch", "batches", "scale")
_INT_FIELDS = ("epoch", "resumed_at_batch", "batches")
# A commit's model before it becomes last.keras (epoch-NNNN.keras at an epoch's end,
# epoch-NNNN-batch-BBBBBB.keras inside epoch NNNN); only the one state.json names counts.
EPOCH_FILE = re.compile(r"^epoch-(\d{4,})(-batch-\d{6,})?\.keras$")
# Temporary model files of kibble before this commit protocol (".tmp-<pid>-last.keras").
OLD_TEMP_FILE = re.compile(r"^\.tmp-\d+-(last|best)\.keras$")
# The weights file Keras writes beside a model it saves through disk (train.tf_env.save_through_disk), before
# zipping it into the .keras file: tempfile's name, "tmp" and 8 characters. A kill during a save leaves it.
KERAS_TEMP_FILE = re.compile(r"^tmp[a-z0-9_]{8}$")

# Steps of `commit_epoch` that the crash tests stop at (shards.fsio.crash_point,
# KIBBLE_CRASH_AT=<step> or <step>@<epoch>, or <step>@<epoch>b<batches> for a
# mid-epoch commit: epoch 1-based, batches done in it).
COMMIT_STEPS = ("epoch-end", "saved", "state-temp", "committed", "best", "last", "history")

# Called as hook(run, state) after every commit has rolled forward, state naming its
# checkpoint; train.remote_run copies the run to its URL from here. A hook that raises
# stops the training, the local commit stays in force.
COMMIT_HOOKS = []


class RunDir:
    """One run directory and every file in it; the only code that reads or writes them.

    Owns config.json, state.json, history.csv, metrics.json, the checkpoints
    best.keras and last.keras, the epoch files in between, and the lock.

    Commit protocol of an epoch (`commit_epoch`), in the manner of Keras's
    BackupAndRestore (one small metadata file decides what is committed):

    1. the model (weights and optimizer state) is saved as `epoch-NNNN.keras`,
       a name no committed file has, and flushed to disk;
    2. state.json is replaced atomically by the new state: epoch count, best
       epoch and loss, seconds, every history row, and `checkpoint`: the name
       of that epoch file. This rename is the commit point;
    3. roll forward: best.keras becomes a hard link to (or copy of) the epoch
       file if this epoch is the best, the epoch file is renamed onto
       last.keras, and history.csv is rewritten from the state's rows.

    A mid-epoch checkpoint is the same commit with `batches` > 0 in the state
    (batches done of epoch `epoch` + 1) and no new history row; its model
    file is epoch-NNNN-batch-BBBBBB.keras and it never becomes best.keras
    (no validation has judged it).

    A process killed anywhere before step 2 leaves the previous commit intact
    (the epoch file is not named by state.json and is deleted at the next
    start); killed after it, `recover` at the next start repeats step 3, which
    is idempotent: the epoch file still exists exactly until step 3 renamed
    it. So the files always end up as the committed state says: history.csv
    holds exactly the committed epochs and last.keras is the committed epoch's
    model. Writing requires the lock (`lock()`); reading does not.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._lock = None

    def __repr__(self):
        return f"RunDir({self.path!r})"

    @property
    def name(self):
        return os.path.basename(os.path.normpath(self.path))

    def file(self, name):
        return os.path.join(self.path, name)

    def checkpoint(self, which="best"):
        """Path of the model file `which` ("best" or "last")."""
        return self.file({"best": BEST, "last": LAST}[which])

    def is_run(self):
        return os.path.isfile(self.file(CONFIG))

    # -- reading ------------------------------------------------------------

    def config(self):
        path = self.file(CONFIG)
        if not os.path.exists(path):
            raise UserError(f"{self.path} is not a run directory (no {CONFIG}); run `train` first")
        data = _read_json(path)
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a run configuration (a JSON object); start a new run")
        return data

    def state(self):
        """The committed state (a dict), or None when no epoch has been committed."""
        path = self.file(STATE)
        if not os.path.exists(path):
            return None
        state = _read_json(path)
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or state["epoch"] < 0:
            raise UserError(f"{path} is damaged (no epoch count); start a new run")
        checkpoint = state.get("checkpoint")
        if checkpoint is not None:
            inside(self.path, checkpoint, f"checkpoint named in {STATE}")
            if not isinstance(checkpoint, str) or not EPOCH_FILE.match(checkpoint):
                raise UserError(f"{path} names {checkpoint!r} as its checkpoint, which train never writes; "
                                "start a new run")
        if "history" in state and not isinstance(state["history"], list):
            raise UserError(f"{path} is damaged (history is not a list); start a new run")
        return state

    def has_model(self, state):
        """Whether the model of committed `state` is on disk (as last.keras, or still to roll forward)."""
        pending = state.get("checkpoint")
        return os.path.exists(self.checkpoint("last")) or bool(pending and os.path.exists(self.file(pending)))

    def history(self):
        """history.csv's rows as dicts of floats (epoch as int); [] when none yet."""
        path = self.file(HISTORY)
        if not os.path.exists(path):
            return []
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [{k: (int(float(v)) if k in _INT_FIELDS else float(v)) for k, v in row.items() if v not in ("", None)}
                for row in rows]

    def metrics(self):
        """metrics.json (written by `evaluate`) as a dict, or None."""
        path = self.file(METRICS)
        return _read_json(path) if os.path.exists(path) else None

    def modified(self):
        return os.path.getmtime(self.file(CONFIG))

    # -- writing (under the lock) ---------------------------------------------

    @contextlib.contextmanager
    def lock(self):
        """Hold the run directory's exclusive lock; a second writer gets a UserError."""
        with FolderLock(self.path, "run directory") as held:
            self._lock = held
            try:
                yield self
            finally:
                self._lock = None

    def _require_lock(self):
        if self._lock is None:
            raise RuntimeError(f"{self.path}: write without holding the run directory's lock")

    def write_config(self, config):
        self._require_lock()
        write_json_atomic(self.file(CONFIG), config)

    def write_metrics(self, metrics):
        write_json_atomic(self.file(METRICS), metrics)

    def start(self, config):
        """Begin the run afresh: forget any earlier epochs, write config.json."""
        self._require_lock()
        for name in self._own_files():
            if name in (STATE, HISTORY, BEST, LAST) or EPOCH_FILE.match(name):
                _remove(self.file(name))
        self.write_config(config)

    def recover(self):
        """Make the files agree with the committed state; return the state (or None).

        Deletes temporary files (ours and Keras's) and epoch files the state
        does not name (a writer killed before its commit) and finishes the roll forward of a
        commit whose process was killed after it.
        """
        self._require_lock()
        remove_temp_files(self.path)
        state = self.state()
        keep = state.get("checkpoint") if state else None
        for name in self._own_files():
            if OLD_TEMP_FILE.match(name) or KERAS_TEMP_FILE.match(name) or (EPOCH_FILE.match(name) and name != keep):
                _remove(self.file(name))
        if state is not None:
            self._roll_forward(state)
        return state

    def commit_epoch(self, model, state):
        """Make `state` durable with `model`: the end of an epoch (its last history row is
        the epoch just trained) or, with state["batches"] > 0, a mid-epoch checkpoint.

        See the class docstring for the protocol. On an error nothing of the
        commit is left behind and the previous commit stays in force.
        """
        self._require_lock()
        tag = _tag(state)
        pending = f"epoch-{state['epoch'] + 1:04d}-batch-{state['batches']:06d}.keras" if state.get("batches") \
            else f"epoch-{state['epoch']:04d}.keras"
        path = self.file(pending)
        crash_point("epoch-end", tag)
        try:
            _disk_errors_name(path, model.save, path)
            _fsync_file(path)
            crash_point("saved", tag)
            _disk_errors_name(self.file(STATE), self._write_state, {**state, "checkpoint": pending})
        except BaseException:
            _remove(path)
            raise
        _fsync_dir(self.path)
        crash_point("committed", tag)
        self._roll_forward({**state, "checkpoint": pending})
        for hook in list(COMMIT_HOOKS):
            hook(self, {**state, "checkpoint": pending})

    def _write_state(self, state):
        with atomic_path(self.file(STATE)) as tmp:
            with open(tmp, "w") as f:
                json.dump(state, f, indent=2)
            crash_point("state-temp", _tag(state))

    def _roll_forward(self, state):
        epoch, pending, tag = state["epoch"], state.get("checkpoint"), _tag(state)
        source = self.file(pending) if pending else None
        if source and os.path.exists(source):
            # Done already if a killed roll forward linked it: renaming a link onto
            # another link of the same file is a no-op that would leave the temp behind.
            if state.get("best_epoch") == epoch and not state.get("batches") \
                    and not _same_file(source, self.file(BEST)):
                with atomic_path(self.file(BEST)) as tmp:
                    _link_or_copy(source, tmp)
                crash_point("best", tag)
            os.replace(source, self.file(LAST))
            _fsync_dir(self.path)
            crash_point("last", tag)
        rows = state.get("history")
        if rows is None:  # a state.json written before history was part of it
            rows = [row for row in self.history() if row["epoch"] <= epoch]
        self._write_history(rows)
        crash_point("history", tag)

    def _write_history(self, rows):
        with atomic_path(self.file(HISTORY)) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def _own_files(self):
        try:
            return [name for name in os.listdir(self.path) if os.path.isfile(self.file(name))
                    or os.path.islink(self.file(name))]
        except FileNotFoundError:
            return []


class Runs:
    """A runs folder: its run directories, the newest-run pointer, names for new runs."""

    def __init__(self, root="runs"):
        self.root = os.fspath(root)

    def all(self):
        """Every run directory (one holding config.json), oldest first."""
        if not os.path.isdir(self.root):
            return []
        runs = [RunDir(os.path.join(self.root, d)) for d in os.listdir(self.root)]
        runs = [run for run in runs if run.is_run()]
        return sorted(runs, key=lambda run: (run.modified(), run.name))

    def latest(self):
        """The newest run: the one LATEST names, else the newest config.json; UserError if none."""
        pointer = os.path.join(self.root, LATEST)
        if os.path.exists(pointer):
            with open(pointer) as f:
                name = f.read().strip()
            candidate = inside(self.root, name, f"the run named by {pointer}") if name else None
            if candidate and os.path.isdir(candidate):
                return RunDir(candidate)
        runs = self.all()
        if not runs:
            raise UserError(f"no training run in {self.root}/: run `train` first (or name a run directory)")
        return runs[-1]

    def mark_latest(self, run):
        """Point LATEST at `run`, which must be a directory directly inside this folder."""
        name = os.path.basename(os.path.normpath(run.path))
        inside(self.root, name, "run directory")
        os.makedirs(self.root, exist_ok=True)
        write_text_atomic(os.path.join(self.root, LATEST), name + "\n")

    def create(self, model):
        """A new, empty run directory with a name no other run has: <model>-<date>-<time>-<microseconds>.

        mkdir is atomic, so of two processes choosing the same name only one
        gets it; the other takes the next free "-N" suffix.
        """
        os.makedirs(self.root, exist_ok=True)
        now = _clock()
        base = os.path.join(self.root, f"{model}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
                                       f"-{int(now * 1e6) % 1_000_000:06d}")
        for attempt in range(1_000_000):
            path = base if attempt == 0 else f"{base}-{attempt}"
            try:
                os.mkdir(path)
                return RunDir(path)
            except FileExistsError:
                continue
        raise UserError(f"cannot find a free run directory name in {self.root}")


def whole_epochs(history, steps=None):
    """history rows of the epochs that trained all `steps` batches (default: the most any row trained).

    A time budget's cut-short last epoch is left out; rows from before the
    `batches` column count as whole.
    """
    steps = steps or max((row.get("batches", 0) for row in history), default=0)
    return [row for row in history if row.get("batches", steps) >= steps]


def _tag(state):
    """The commit's name in crash points: 2 for the end of epoch 2, "3b40" for 40 batches into epoch 3."""
    batches = state.get("batches")
    return f"{state['epoch'] + 1}b{batches}" if batches else state["epoch"]


# The clock that names runs (tests freeze it to provoke same-name races).
_clock = time.time


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); start a new run") from None


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path):
    """Make renames in `path` durable; not every platform can open a folder."""
    with contextlib.suppress(OSError):
        _fsync_file(path)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _link_or_copy(source, target):
    """`target` as a hard link to `source` (no second copy on disk), else a copy."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in DISK_ERRORS - {errno.EPERM}:  # EPERM: the file system has no hard links
            raise
        shutil.copyfile(source, target)


def _disk_errors_name(path, function, *args):
    """Call `function`; a disk error from deep inside Keras or h5py comes out naming `path`.

    Keras and h5py often raise disk errors without a file name, or re-raise
    them as other types carrying the errno only in their message.
    """
    try:
        return function(*args)
    except Exception as exc:
        found = disk_errno(exc)
        if found:
            raise OSError(found, os.strerror(found), path) from None
        raise
