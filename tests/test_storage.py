"""Shards in object storage (issue 12 items 1, 3, 7): --out and --data as URLs.

Against a real S3-protocol server (moto's, over HTTP on loopback; the
`s3_server` fixture of conftest.py), and fsspec's memory:// for the cheap
cases. Commands run in-process through click's runner, so the memory file
system and TensorFlow's import are shared between steps.
"""
import json
import os

import fsspec
import pytest
from click.testing import CliRunner

from cli import cli
from shards import storage
from shards.manifest import load_manifest
from tests.conftest import S3_KEY_ID, S3_SECRET, make_kaggle_folder

INGEST = ["--size", "16x16", "--shard-size", "10", "--val", "0.2", "--test", "0.2", "--scheduler", "sync"]
TRAIN = ["--model", "mlp", "--epochs", "1", "--train-size", "16", "--val-size", "8", "--batch-size", "8"]


def run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_kaggle_folder(str(tmp_path_factory.mktemp("storage") / "train"), cats=20, dogs=20)


def _all_bytes(folder):
    for base, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(base, name), "rb") as f:
                yield os.path.join(base, name), f.read()


def test_ingest_to_s3_then_verify_info_train_evaluate_cached_and_streamed(images, bucket, s3_server, tmp_path):
    url = f"{bucket}/shards"
    cache = tmp_path / "cache"
    ingest = ok("ingest", images, "--out", url, *INGEST)
    assert f"uploaded 5 shards" in ingest.stderr and url in ingest.stderr
    fs = fsspec.filesystem("s3")
    assert sorted(os.path.basename(p) for p in fs.ls(url)) == [
        "manifest.json", "test-00000.h5", "train-00000.h5", "train-00001.h5", "train-00002.h5", "val-00000.h5"]
    assert not os.path.exists(storage.cache_folder(url, str(cache)))

    for access in (["--cache", tmp_path / "verify-cache"], ["--stream"], ["--cache", "none"]):
        assert ok("verify", "--data", url, *access).stdout.startswith(f"OK: 5 shards in {url} match")
    info = json.loads(ok("info", "--data", url, "--runs", tmp_path / "runs", "--json").stdout)
    assert info["data"]["images"] == 40 and info["data"]["folder"] == url

    # Train from the cache: train and val are fetched, the test shard is not.
    run_dir = tmp_path / "runs" / "cached"
    ok("train", "--data", url, "--cache", cache, "--run-dir", run_dir, *TRAIN)
    folder = storage.cache_folder(url, str(cache))
    assert sorted(os.listdir(folder)) == ["manifest.json", "train-00000.h5", "train-00001.h5", "train-00002.h5",
                                          "val-00000.h5"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"] == url and config["manifest_sha256"] == load_manifest(url).checksum

    # Evaluate defaults to the run's data (the URL), here streamed: nothing more lands in the cache.
    ok("evaluate", run_dir, "--stream", "--split", "test")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"] == url and metrics["same_data_as_training"]
    assert metrics["splits"]["test"]["count"] == 8 and metrics["splits"]["val"]["count"] == 8
    assert "test-00000.h5" not in os.listdir(folder)

    # No credential, and not the endpoint, in any file written: run dirs, the cache, the bucket.
    secrets = [S3_KEY_ID.encode(), S3_SECRET.encode(), s3_server.encode(), s3_server.split("//")[1].encode()]
    written = list(_all_bytes(tmp_path)) + [(p, fs.cat_file(p)) for p in fs.find(bucket)]
    assert len(written) > 20
    for path, content in written:
        assert not any(secret in content for secret in secrets), path


def test_rerun_of_a_complete_ingest_uploads_nothing(images, bucket):
    url = f"{bucket}/shards"
    ok("ingest", images, "--out", url, *INGEST)
    again = ok("ingest", images, "--out", url, *INGEST)
    assert f"{url} already holds this ingest (40 images); nothing uploaded; 5 shards already there" in again.stderr


def test_memory_url_ingest_verify_and_cache(images, tmp_path):
    url = "memory://kibble-test/shards"
    ok("ingest", images, "--out", url, *INGEST)
    assert fsspec.filesystem("memory").exists("/kibble-test/shards/manifest.json")
    assert ok("verify", "--data", url, "--stream").stdout.startswith("OK: 5 shards")
    manifest = storage.open_shards(url, storage.Access(cache=str(tmp_path)), splits=("val",))
    assert manifest.folder == storage.cache_folder(url, str(tmp_path))
    assert sorted(os.listdir(manifest.folder)) == ["manifest.json", "val-00000.h5"]
    assert manifest.checksum == load_manifest(url).checksum


def test_streamed_cached_and_local_reads_give_the_same_images(images, tmp_path):
    from shards import stream

    url = "memory://kibble-same/shards"
    ok("ingest", images, "--out", url, *INGEST, "--staging", tmp_path / "staging")
    local = load_manifest(str(tmp_path / "staging"))
    cached = storage.open_shards(url, storage.Access(cache=str(tmp_path / "cache")))
    streamed = storage.open_shards(url, storage.Access(stream=True))
    assert streamed.folder == url and cached.folder != local.folder

    def read(manifest):
        blocks = stream.plan_blocks(manifest, "train", block=4)
        return [(images.tobytes(), labels.tolist(), names)
                for images, labels, names in stream.read_blocks([[b] for b in blocks], names=True)]
    assert read(streamed) == read(cached) == read(local) and len(read(local)) == 7  # 10 + 10 + 4 images in blocks of 4


def test_file_url_is_the_local_folder(images, tmp_path):
    ok("ingest", images, "--out", f"file://{tmp_path}/shards", *INGEST)
    assert (tmp_path / "shards" / "manifest.json").is_file()
    assert ok("verify", "--data", f"file://{tmp_path}/shards").stdout.startswith(f"OK: 5 shards in {tmp_path}")


def test_streaming_keeps_few_read_ahead_buffers(images, tmp_path, monkeypatch):
    """Memory stays bounded: however many shards a pass opens, only LIVE_STREAMS hold a buffer."""
    from shards import stream

    url = "memory://kibble-live/shards"
    ok("ingest", images, "--out", url, "--size", "16x16", "--shard-size", "2", "--scheduler", "sync")
    monkeypatch.setattr(storage, "LIVE_STREAMS", 3)
    manifest = load_manifest(url)
    blocks = stream.plan_blocks(manifest, "train")
    live = []
    total = 0
    for _, labels, _ in stream.read_blocks([[block] for block in blocks]):
        total += len(labels)
        live.append(sum(1 for f in list(storage._live) if f._handle is not None))
    assert len(blocks) > 10 and total == manifest.split_count("train")
    assert max(live) == 3
