"""Ingest on a Dask cluster with no shared disk (issue 12 items 2 and 7).

Real parts: moto's S3 server over HTTP on loopback (conftest's `s3_server`),
a dask.distributed scheduler in this process and worker processes started
as `python -m distributed.cli.dask_worker`. Each worker runs in its own
mount namespace with a private, empty tmpfs over pytest's base temporary
folder (`unshare --mount`): it cannot see the driver's scratch folders
(pytest's tmp_path, the local images), so any hidden shared-disk assumption
about them fails here. (The driver's default staging folder, under the
system temporary folder, stays visible to a worker on this one machine.)
INPUT and --out exist only in the bucket.
"""
import os
import pickle
import re
import shutil
import subprocess
import sys
import time

import fsspec
import pytest
from click.testing import CliRunner

from cli import cli
from ingest import IngestSettings, ingest
from tests.conftest import ROOT, S3_KEY_ID, S3_SECRET, make_kaggle_folder

distributed = pytest.importorskip("distributed")

SETTINGS = IngestSettings(size=(16, 16), shard_size=4, val=0.2, test=0.2)
INGEST = ["--size", "16x16", "--shard-size", "4", "--val", "0.2", "--test", "0.2"]
# A worker started with this environment dies (exit 86, like kill -9) while writing its first shard.
CRASH = {"KIBBLE_CRASH_AT": "shard-writing"}
_SHARD_KEYS = ("file", "split", "index", "count", "class_counts", "sha256", "bytes")


def _isolation_prefix(hidden):
    """The command prefix giving a worker an empty private folder over `hidden`, or [] where mount
    namespaces are not allowed.

    `hidden` is pytest's base temporary folder: the driver's tmp_path folders and local images lie
    inside it, while the checkout and its .venv (which may themselves be under /tmp on a CI machine)
    stay visible to the worker.
    """
    mount = f'mount -t tmpfs kibble-worker "{hidden}"'
    try:
        if subprocess.run(["unshare", "--mount", "sh", "-c", mount], capture_output=True, timeout=10).returncode == 0:
            return ["unshare", "--mount", "sh", "-c", mount + ' && exec "$@"', "worker"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return []


class _TaskArguments(distributed.diagnostics.plugin.SchedulerPlugin):
    """Keeps the pickled spec of every task the scheduler hands to a worker."""

    def __init__(self, scheduler):
        self.scheduler, self.blobs = scheduler, []

    def transition(self, key, start, finish, *args, **kwargs):
        task = self.scheduler.tasks.get(key)
        if finish == "processing" and task is not None and task.run_spec is not None:
            import cloudpickle

            self.blobs.append(cloudpickle.dumps(task.run_spec))


class Cluster:
    def __init__(self, env, hidden):
        self.env, self.hidden = env, hidden
        self.local = distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1",
                                              dashboard_address=None)
        self.address = self.local.scheduler_address
        self.client = distributed.Client(self.address)
        self.prefix = _isolation_prefix(hidden)
        self.tasks = _TaskArguments(self.local.scheduler)
        self.local.scheduler.add_plugin(self.tasks)
        self.processes = []

    def add_worker(self, nanny=True, **env):
        command = [*self.prefix, sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                   "--nthreads", "1", "--no-dashboard", "--local-directory",
                   os.path.join(self.hidden, "dask-worker")]
        if not nanny:
            command.append("--no-nanny")
        environment = {**self.env, **env, "PYTHONPATH": ROOT, "TMPDIR": self.hidden}
        process = subprocess.Popen(command, env=environment, cwd="/", stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def wait_for(self, count):
        self.client.wait_for_workers(count, timeout=90)

    def close(self):
        self.client.close()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.local.close()


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "KIBBLE_CRASH_AT"}
    cluster = Cluster(env, str(tmp_path_factory.getbasetemp()))
    try:
        cluster.add_worker()
        cluster.add_worker()
        cluster.wait_for(2)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A local image folder with files that must be skipped: an empty one, a broken JPEG, a text file."""
    folder = make_kaggle_folder(str(tmp_path_factory.mktemp("cluster") / "train"), cats=12, dogs=12)
    open(os.path.join(folder, "cat.90.jpg"), "wb").close()
    with open(os.path.join(folder, "dog.91.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image\n")
    return folder


@pytest.fixture(scope="module")
def local(images, tmp_path_factory):
    """The same images ingested on this machine alone: what the cluster must reproduce."""
    return ingest(images, str(tmp_path_factory.mktemp("local") / "shards"), SETTINGS, scheduler="sync",
                  progress=False)


@pytest.fixture
def s3_images(images, bucket):
    fs = fsspec.filesystem("s3")
    for name in sorted(os.listdir(images)):
        fs.put_file(os.path.join(images, name), f"{bucket}/images/{name}")
    return f"{bucket}/images"


def _cli(*args):
    result = CliRunner().invoke(cli, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def _bucket_manifest(url):
    import json

    return json.loads(fsspec.filesystem("s3").cat_file(f"{url}/manifest.json"))


def _same_ingest(manifest, local):
    assert manifest["plan"] == local["plan"]
    assert [{k: s[k] for k in _SHARD_KEYS} for s in manifest["shards"]] == \
        [{k: s[k] for k in _SHARD_KEYS} for s in local["shards"]]
    for key in ("skipped", "duplicates", "near_duplicates", "splits", "classes"):
        assert manifest[key] == local[key], key


def test_cluster_ingest_from_s3_equals_local_and_a_rerun_repairs_only_what_is_wrong(
        cluster, images, local, s3_images, bucket, s3_server, tmp_path):
    # The workers really cannot see this machine's scratch folders.
    if cluster.prefix:
        assert not any(cluster.client.run(os.path.exists, str(tmp_path)).values())
        assert not any(cluster.client.run(os.path.exists, images).values())
    out = f"{bucket}/shards"
    first = _cli("ingest", s3_images, "--out", out, "--scheduler", cluster.address, *INGEST)
    manifest = _bucket_manifest(out)
    _same_ingest(manifest, local)
    assert {s["name"]: s["reason"] for s in manifest["skipped"]}.keys() == {"cat.90.jpg", "dog.91.jpg",
                                                                            "notes.txt"}
    assert manifest["source"]["path"] == s3_images
    shards = len(local["shards"])
    assert f"uploaded {shards} shards" in first.stderr
    # Progress as on one machine: every planned image counted once, by the scan and by the shard tasks.
    planned = sum(s["count"] for s in local["shards"]) + 1  # + the broken JPEG, skipped when decoded
    assert re.findall(r"ingest.*?(\d+)/(\d+) img", first.stderr)[-1] == (str(planned), str(planned))

    # Nothing secret and nothing of this machine in what the workers were sent, nor in the bucket.
    sent = b"".join(cluster.tasks.blobs)
    assert len(cluster.tasks.blobs) >= shards
    for text in (S3_KEY_ID, S3_SECRET, s3_server, images, str(tmp_path), "kibble-staging"):
        assert text.encode() not in sent, text
    fs = fsspec.filesystem("s3")
    stored = b"".join(fs.cat_file(p) for p in fs.find(out)) + first.output.encode()
    for text in (S3_KEY_ID, S3_SECRET, s3_server.split("//")[1]):
        assert text.encode() not in stored, text

    # A re-run checks the bucket, builds and uploads nothing.
    again = _cli("ingest", s3_images, "--out", out, "--scheduler", cluster.address, *INGEST)
    assert "already holds this ingest" in again.stderr and "nothing uploaded" in again.stderr
    assert "checked by download" not in again.stderr

    # One shard deleted and one truncated: exactly those two are built and uploaded again.
    entries = manifest["shards"]
    fs.rm_file(f"{out}/{entries[0]['file']}")
    fs.pipe_file(f"{out}/{entries[-1]['file']}", fs.cat_file(f"{out}/{entries[-1]['file']}")[:1000])
    repaired = _cli("ingest", s3_images, "--out", out, "--scheduler", cluster.address, *INGEST)
    assert f"uploaded 2 shards" in repaired.stderr and f"{shards - 2} shards already there" in repaired.stderr
    _same_ingest(_bucket_manifest(out), local)
    assert _cli("verify", "--data", out, "--stream").stdout.startswith(f"OK: {shards} shards")


def test_worker_killed_mid_shard_is_retried_and_the_output_is_identical(cluster, local, s3_images, bucket):
    doomed = cluster.add_worker(nanny=False, **CRASH)
    cluster.wait_for(3)
    out = f"{bucket}/shards"
    _cli("ingest", s3_images, "--out", out, "--scheduler", cluster.address, *INGEST)
    assert doomed.wait(timeout=30) == 86  # it died inside a shard task, which Dask gave to another worker
    _same_ingest(_bucket_manifest(out), local)


def test_local_out_with_a_cluster_is_refused_unless_the_disk_is_shared(cluster, s3_images, tmp_path):
    result = CliRunner().invoke(cli, ["ingest", s3_images, "--out", str(tmp_path / "shards"),
                                      "--scheduler", cluster.address, *INGEST])
    assert result.exit_code == 2 and "--shared-disk" in result.output
    assert not (tmp_path / "shards").exists()


def test_s3_input_with_local_workers_equals_the_local_ingest(local, s3_images, tmp_path):
    # Forked worker processes open the objects with their own connections, as cluster workers do. In a
    # process of its own: this one runs the cluster's scheduler and the S3 server in threads, and a fork
    # of a process with threads can inherit a lock one of them held (it hung once under load).
    import json

    out = tmp_path / "shards"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "--quiet", "ingest", s3_images,
                           "--out", str(out), "--scheduler", "processes", "--workers", "2", *INGEST],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _same_ingest(json.loads((out / "manifest.json").read_text()), local)


def test_zip_and_folder_at_a_memory_url_equal_the_local_ingest(images, local, tmp_path):
    import zipfile

    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), f"train/{name}")
    fs = fsspec.filesystem("memory")
    fs.put_file(str(archive), "/cluster-test/train.zip")
    for name in sorted(os.listdir(images)):
        fs.put_file(os.path.join(images, name), f"/cluster-test/images/{name}")
    from_zip = ingest("memory://cluster-test/train.zip", str(tmp_path / "z"), SETTINGS, scheduler="sync",
                      progress=False)
    from_folder = ingest("memory://cluster-test/images", str(tmp_path / "f"), SETTINGS, scheduler="sync",
                         progress=False)
    fs.rm("/cluster-test", recursive=True)
    assert from_zip["source"]["kind"] == "zip" and from_folder["source"]["path"] == "memory://cluster-test/images"
    _same_ingest(from_folder, local)
    # A zip's member names carry its top folder: compared with the same zip read from this disk.
    _same_ingest(from_zip, ingest(str(archive), str(tmp_path / "lz"), SETTINGS, scheduler="sync", progress=False))
