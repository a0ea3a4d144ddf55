"""predict under hostile inputs: each odd file or folder is that file's error, never a hang or a traceback,
and the CSV / JSON on stdout is complete and valid whatever stops the run.

A new input case is one line in INPUT_CASES; a new failure during the run is one line in STOP_CASES.
"""
import contextlib
import csv
import ctypes
import errno
import io
import json
import os
import re
import shutil
import signal
import struct

import pytest
from click.testing import CliRunner

import kibble.predict
from cli import cli
from ingest import IngestSettings, ingest
from shards import load_manifest
from shards.errors import UserError
from tests.conftest import make_kaggle_folder

HANG_SECONDS = 60  # far above a normal case (under a second): reaching it means predict blocked


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in predict can swallow it."""


@pytest.fixture(autouse=True)
def no_hang():
    def alarm(signum, frame):
        raise Hang(f"predict still running after {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(image folder, run directory): 20 + 20 Kaggle-style images at 16x16, an mlp trained 1 epoch."""
    from train.run import TrainSettings, train

    root = tmp_path_factory.mktemp("faults-predict")
    images = make_kaggle_folder(str(root / "train"))
    shards = str(root / "shards")
    ingest(images, shards, IngestSettings(size=(16, 16)), scheduler="sync", progress=False)
    manifest = load_manifest(shards)
    result = train(TrainSettings(data=shards, model="mlp", train_size=manifest.split_count("train"),
                                 val_size=manifest.split_count("val"),
                                 epochs=1), runs_root=str(root / "runs"), progress=False)
    return images, result["run_dir"]


# ---- input builders: each makes its case in `folder` (holding cat.0.jpg, a good image) and returns
# (the paths to pass, {path relative to folder: expected substring of its error}).

def _dds_named_jpg(folder):
    # A DDS header whose pixel format Pillow knows it cannot decode: Image.open raises NotImplementedError.
    header = struct.pack("<4I", 124, 0, 16, 16) + bytes(56) + struct.pack("<4I", 32, 0x4, 0x30303030, 0)
    (folder / "cat.999.jpg").write_bytes(b"DDS " + header + bytes(124 - len(header)))
    return [folder], {"cat.999.jpg": "pixel format"}


def _file_symlink_loop(folder):
    os.symlink("cat.401.jpg", folder / "cat.401.jpg")
    return [folder], {"cat.401.jpg": "symlink loop"}


def _symlink_loop_given(folder):
    os.symlink("loop.jpg", folder / "loop.jpg")
    return [folder / "loop.jpg", folder / "cat.0.jpg"], {"loop.jpg": "symlink loop"}


def _folder_symlink_loop(folder):
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up")
    return [folder], {"sub/up": "symlink loop"}


def _fifo(folder):
    os.mkfifo(folder / "b.jpg")
    return [folder], {"b.jpg": "FIFO"}


def _device(folder):
    os.symlink(os.devnull, folder / "d.jpg")
    return [folder], {"d.jpg": "character device"}


def _missing(folder):
    return [folder / "nope.jpg", folder], {"nope.jpg": "No such file"}


def _empty(folder):
    (folder / "e.jpg").write_bytes(b"")
    return [folder], {"e.jpg": "not an image"}


def _unreadable_folder(folder):
    (folder / "locked").mkdir()
    shutil.copy(folder / "cat.0.jpg", folder / "locked" / "cat.1.jpg")
    os.chmod(folder / "locked", 0)
    return [folder], {"locked": "Permission denied"}


INPUT_CASES = [
    ("undecodable", _dds_named_jpg),
    ("file-symlink-loop", _file_symlink_loop),
    ("symlink-loop-argument", _symlink_loop_given),
    ("folder-symlink-loop", _folder_symlink_loop),
    ("fifo", _fifo),
    ("device", _device),
    ("missing", _missing),
    ("empty", _empty),
    ("unreadable-folder", _unreadable_folder),
]


def _parse(fmt, stdout):
    if fmt == "json":
        return json.loads(stdout)
    rows = list(csv.DictReader(io.StringIO(stdout)))
    return [{**row, "p_cat": float(row["p_cat"]) if row["p_cat"] else None,
             "label": row["label"] or None, "error": row["error"] or None} for row in rows]


@pytest.mark.parametrize("fmt", ["json", "csv"])
@pytest.mark.parametrize("build", [case[1] for case in INPUT_CASES], ids=[case[0] for case in INPUT_CASES])
def test_a_bad_input_is_its_own_error_and_the_rest_is_predicted(tiny_run, tmp_path, build, fmt):
    images, run_dir = tiny_run
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(os.path.join(images, "cat.0.jpg"), folder / "cat.0.jpg")
    paths, expected = build(folder)

    with _as_an_ordinary_user():
        result = CliRunner().invoke(cli, ["predict", *map(str, paths), "--run", run_dir, "--format", fmt])
    os.chmod(folder, 0o755)  # let pytest clean up whatever the case locked
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            os.chmod(child, 0o755)

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.stderr, result.exception
    rows = _parse(fmt, result.stdout)
    errors = {os.path.relpath(r["file"], folder): r["error"] for r in rows if r["error"]}
    assert set(errors) == set(expected), rows
    for name, reason in expected.items():
        assert reason in errors[name], (name, errors[name])
        assert not [r for r in rows if r["file"].endswith(name) and r["p_cat"] is not None]
    predicted = [r for r in rows if not r["error"]]
    assert [os.path.basename(r["file"]) for r in predicted] == ["cat.0.jpg"]
    assert 0 <= predicted[0]["p_cat"] <= 1 and predicted[0]["label"] in ("cat", "dog")
    assert "1 predicted" in result.stderr and f"{len(expected)} failed" in result.stderr


def test_symlinked_folders_are_followed_once(tiny_run, tmp_path):
    images, run_dir = tiny_run
    (tmp_path / "real").mkdir()
    shutil.copy(os.path.join(images, "dog.3.jpg"), tmp_path / "real" / "dog.3.jpg")
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "in" / "a")
    os.symlink(tmp_path / "real", tmp_path / "in" / "b")
    found = list(kibble.predict.expand_paths(str(tmp_path / "in")))
    assert [(os.path.relpath(p, tmp_path), bool(problem)) for p, problem in found] == [
        ("in/a/dog.3.jpg", False), ("in/b", True)]
    assert "the same folder (through a symlink) as" in found[1][1] and found[1][1].endswith("in/a")


# ---- failures after output started: the document is closed, one Error: line, an exit code other than 1.

class _Failing:
    """The run's real model, raising `error` from its `calls`-th predict_on_batch call on."""

    def __init__(self, model, error, calls):
        self._model, self._error, self._calls = model, error, calls

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict_on_batch(self, images):
        self._calls -= 1
        if self._calls <= 0:
            raise self._error
        return self._model.predict_on_batch(images)


def _model_raises(monkeypatch, error):
    load = kibble.predict._load_model
    monkeypatch.setattr(kibble.predict, "_load_model", lambda path: _Failing(load(path), error, calls=2))


def _decoder_raises(monkeypatch, error):
    load = kibble.predict.load_image

    def failing(path, **kwargs):
        if os.path.basename(path) == "dog.0.jpg":  # the 4th file: the first batch of 2 is already written
            raise error
        return load(path, **kwargs)

    monkeypatch.setattr(kibble.predict, "load_image", failing)


STOP_CASES = [
    # (where the fault is injected, the exception, exit code, expected part of the Error: line)
    (_model_raises, RuntimeError("simulated model fault"), 3, "unexpected error: RuntimeError: simulated model fault"),
    (_model_raises, UserError("the model outputs 3 values for 2 images"), 2, "the model outputs 3 values"),
    (_model_raises, OSError(errno.ENOSPC, "No space left on device", "/out"), 2, "No space left on device"),
    (_model_raises, MemoryError(), 3, "out of memory"),
    (_decoder_raises, MemoryError(), 3, "out of memory"),  # not one file's problem: it must stop the run
]


@pytest.mark.parametrize("fmt", ["json", "csv"])
@pytest.mark.parametrize("inject, error, code, message", STOP_CASES,
                         ids=[f"{c[0].__name__[1:]}-{type(c[1]).__name__}" for c in STOP_CASES])
def test_a_failure_mid_output_closes_it_and_is_one_error_line(tiny_run, tmp_path, monkeypatch, inject, error,
                                                              code, message, fmt):
    images, run_dir = tiny_run
    files = [os.path.join(images, f"{kind}.{i}.jpg") for kind in ("cat", "dog") for i in range(3)]
    inject(monkeypatch, error)
    result = CliRunner().invoke(cli, ["predict", *files, "--run", run_dir, "--format", fmt, "--batch-size", "2"])

    assert result.exit_code == code, result.output
    rows = _parse(fmt, result.stdout)  # complete and valid: parses
    assert [r["file"] for r in rows] == files[:2] and all(r["p_cat"] is not None for r in rows)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1], result.stderr
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr and sum(line.startswith("Error") for line in lines) == 1


def test_the_help_documents_the_exit_codes():
    result = CliRunner().invoke(cli, ["predict", "--help"])
    block = result.output.split("Exit codes:")[1].split("Example:")[0]
    assert re.findall(r"^    (\d+) ", block, re.M) == ["0", "1", "2", "3", "130"]
    assert "complete and valid" in result.output


# ---- root reads any folder whatever its mode: drop that power from this thread while a case runs.

_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_CAPABILITY_VERSION_3 = 0x20080522


@contextlib.contextmanager
def _as_an_ordinary_user():
    """Run the block without root's right to read any folder, so chmod 0 stops reads as it does for a user.

    Linux capabilities are per thread and CliRunner runs the command in this thread: clearing
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its effective set (they stay permitted, so they are
    restored afterwards) makes the kernel check folder modes for real.
    """
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}
    if libc.capget(header, data) != 0:
        pytest.skip("running as root and capget failed: cannot make a folder unreadable to this process")
    saved = list(data)
    data[0] &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    if libc.capset(header, data) != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: chmod cannot make a folder unreadable")
    try:
        yield
    finally:
        for i, value in enumerate(saved):
            data[i] = value
        if libc.capset(header, data) != 0:
            raise OSError(ctypes.get_errno(), "could not restore this thread's capabilities")
