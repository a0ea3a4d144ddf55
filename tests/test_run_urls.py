"""Run directories at a URL (train.remote_run): train, resume, evaluate, predict and compare through a bucket.

memory:// (this process's own store) for what needs no second process; the
moto S3 server (tests/conftest.py) for a training killed after an upload
and resumed by a fresh working copy, as on another machine.
"""
import csv
import io
import json
import os
import subprocess
import sys

import fsspec
import pytest
from click.testing import CliRunner

from cli import cli
from tests.conftest import ROOT, S3_KEY_ID, S3_SECRET, make_kaggle_folder, make_kaggle_shards
from train.rundir import CRASH_ENV, CRASH_EXIT

TINY = ["--model", "mlp", "--train-size", "16", "--val-size", "8", "--batch-size", "8", "--checkpoint-every", "off"]
RUN_FILES = {"config.json", "state.json", "history.csv", "best.keras", "last.keras"}


def invoke(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def listing(url):
    """{name relative to url: bytes} of every object under url."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    root = root.rstrip("/") + "/"
    return {path[len(root):]: info["size"] for path, info in fs.find(root, detail=True).items()}


def read(url):
    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path).decode()


def history_epochs(url):
    return [int(row["epoch"]) for row in csv.DictReader(io.StringIO(read(url)))]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache root (and so fresh working copies) for each test; `cache.new()` gives another."""
    class Cache:
        count = 0

        def new(self):
            self.count += 1
            path = str(tmp_path / f"cache{self.count}")
            monkeypatch.setenv("KIBBLE_CACHE", path)
            return path

    made = Cache()
    made.new()
    return made


@pytest.fixture(scope="module")
def killed_run(shards, s3_server, tmp_path_factory):
    """A training to a new bucket killed right after its epoch 1 was uploaded, started in a process of its
    own before the other tests (TensorFlow's import there overlaps their work): (Popen, runs URL)."""
    import uuid

    name = f"kibble-killed-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    runs = f"s3://{name}/runs"
    command = [sys.executable, os.path.join(ROOT, "cli.py"), "train", "--data", shards, "--runs", runs,
               "--epochs", "2", *TINY]
    env = {**os.environ, CRASH_ENV: "uploaded@1", "KIBBLE_CACHE": str(tmp_path_factory.mktemp("cache-killed"))}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process, runs
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def memory_run(killed_run, shards, tmp_path_factory):
    """A 2-epoch run trained to memory://, with the working copy it left: (runs URL, run name, output)."""
    os.environ["KIBBLE_CACHE"] = str(tmp_path_factory.mktemp("cache-train"))
    try:
        runs = "memory://kibble-runs/runs"
        result = invoke("train", "--data", shards, "--runs", runs, "--epochs", 2, *TINY)
    finally:
        del os.environ["KIBBLE_CACHE"]
    assert result.exit_code == 0, result.output
    return runs, read(f"{runs}/LATEST").strip(), result.output


def test_train_to_url_uploads_the_committed_run(memory_run):
    runs, name, output = memory_run
    held = listing(f"{runs}/{name}")
    assert RUN_FILES <= set(held)
    assert any(n.startswith("logs/") for n in held)
    assert not any(n.startswith("epoch-") or n == ".lock" for n in held)  # rolled forward, lock stays local
    state = json.loads(read(f"{runs}/{name}/state.json"))
    assert state["epoch"] == 2 and history_epochs(f"{runs}/{name}/history.csv") == [1, 2]
    assert f"run directory: {runs}/{name}" in output


def test_evaluate_predict_compare_from_the_url(memory_run, cache, tmp_path):
    runs, name, _ = memory_run
    url = f"{runs}/{name}"
    result = invoke("evaluate", url, "--split", "val")
    assert result.exit_code == 0, result.output
    held = listing(url)
    assert {"metrics.json", "report.md"} <= set(held) and any(n.startswith("figures/") for n in held)
    assert json.loads(read(f"{url}/metrics.json"))["threshold"]["chosen_on"] == "val"
    # A fresh working copy reads the uploaded metrics: predict uses the threshold evaluate chose.
    cache.new()
    images = make_kaggle_folder(str(tmp_path / "images"), cats=2, dogs=1)
    result = invoke("predict", images, "--run", url, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert "metrics.json" in result.output  # "threshold 0.xx chosen on val (<copy>/metrics.json)"
    rows = [line for line in result.output.splitlines() if line.endswith((".jpg", ".png")) or ".jpg," in line]
    assert len(rows) == 3
    result = invoke("compare", "--runs", runs)
    assert result.exit_code == 0, result.output
    assert name in result.output
    assert set(listing(url)) == set(held)  # read-only: compare uploaded nothing


def test_resume_uploads_a_working_copy_newer_than_the_url(shards, cache):
    """Killed between a local commit and its upload: the next start uploads the commit, then trains on."""
    runs = "memory://kibble-newer/runs"
    assert invoke("train", "--data", shards, "--runs", runs, "--epochs", 1, *TINY).exit_code == 0
    fs, root = fsspec.core.url_to_fs(runs)
    fs.rm(root, recursive=True)  # as if the first upload never happened
    result = invoke("train", "--resume", "--runs", runs, "--epochs", 2, *TINY[-2:])
    assert result.exit_code == 0, result.output
    assert "Epoch 1/2" not in result.output and "Epoch 2/2" in result.output
    name = read(f"{runs}/LATEST").strip()
    assert history_epochs(f"{runs}/{name}/history.csv") == [1, 2]
    assert json.loads(read(f"{runs}/{name}/state.json"))["epoch"] == 2


def test_killed_after_an_upload_resumes_from_the_bucket_in_a_fresh_copy(killed_run, cache):
    process, runs = killed_run
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == CRASH_EXIT, stderr[-2000:]
    name = read(f"{runs}/LATEST").strip()
    assert json.loads(read(f"{runs}/{name}/state.json"))["epoch"] == 1
    first = read(f"{runs}/{name}/history.csv")

    cache.new()  # another machine: no working copy
    result = invoke("train", "--resume", "--runs", runs)
    assert result.exit_code == 0, result.output
    assert "Epoch 1/2" not in result.output and "Epoch 2/2" in result.output
    assert json.loads(read(f"{runs}/{name}/state.json"))["epoch"] == 2
    assert read(f"{runs}/{name}/history.csv").startswith(first.splitlines()[0])
    assert history_epochs(f"{runs}/{name}/history.csv") == [1, 2]
    assert RUN_FILES <= set(listing(f"{runs}/{name}"))


@pytest.mark.parametrize("args", [
    ["train", "--runs", f"s3://{S3_KEY_ID}:{S3_SECRET}@bucket/runs"],
    ["train", "--run-dir", f"s3://{S3_KEY_ID}:{S3_SECRET}@bucket/runs/r1"],
    ["evaluate", f"s3://{S3_KEY_ID}:{S3_SECRET}@bucket/runs/r1"],
    ["predict", "x.jpg", "--run", f"s3://bucket/runs/r1?secret={S3_SECRET}"],
    ["compare", f"s3://{S3_KEY_ID}:{S3_SECRET}@bucket/runs/r1"],
])
def test_a_url_with_credentials_is_refused(args):
    result = invoke(*args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "credentials" in lines[0]
    assert S3_SECRET not in result.output
