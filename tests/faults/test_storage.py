"""Faults of shards in object storage (issue 12 items 1, 3, 7), against moto's S3 server on loopback.

A damaged or incomplete bucket is repaired by re-running ingest (only what
is missing or wrong goes up, the manifest last); a damaged cached copy is
downloaded again; a hostile manifest names nothing outside its folder; every
refusal is one `Error:` line with exit code 2 that names no secret.
"""
import json
import os
import subprocess
import sys

import fsspec
import pytest
from click.testing import CliRunner

from cli import cli
from shards import UserError, load_manifest, storage
from shards.fsio import CRASH_ENV, CRASH_EXIT
from tests.conftest import ROOT, S3_SECRET, make_kaggle_folder

INGEST = ["--size", "16x16", "--shard-size", "10", "--val", "0.2", "--test", "0.2", "--scheduler", "sync"]
SHARD = "train-00001.h5"


def run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def one_error_line(*argv):
    result = run("-q", *argv)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_kaggle_folder(str(tmp_path_factory.mktemp("storage-faults") / "train"), cats=20, dogs=20)


@pytest.fixture(scope="module")
def built(images, tmp_path_factory):
    """A local shard folder of `images`, built once: uploaded where a test needs a bucket but not an ingest."""
    folder = str(tmp_path_factory.mktemp("storage-built") / "shards")
    assert run("ingest", images, "--out", folder, *INGEST).exit_code == 0
    return folder


def _publish(built, url):
    from ingest.upload import upload_folder

    assert upload_folder(built, url, progress=False)["uploaded"] == 5


def _s3():
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs


def _flip(data):
    return data[:-100] + bytes(b ^ 0xFF for b in data[-100:])


def _delete(fs, key):
    fs.rm_file(key)


def _truncate(fs, key):
    fs.pipe_file(key, fs.cat_file(key)[:-10])


def _corrupt(fs, key):
    fs.pipe_file(key, _flip(fs.cat_file(key)))


# (bucket damage, object it hits, --staging kept, shards uploaded by the re-run, shards checked by download)
REPAIRS = [
    ("deleted shard", _delete, SHARD, True, 1, 0),
    ("deleted shard, staging gone", _delete, SHARD, False, 1, 0),
    ("truncated shard", _truncate, SHARD, False, 1, 0),
    ("same-size corruption, proved by the recorded version", _corrupt, SHARD, True, 1, 1),
    ("deleted manifest, recorded versions vouch", _delete, "manifest.json", True, 0, 0),
    ("deleted manifest, nothing recorded: re-download", _delete, "manifest.json", False, 0, 5),
]


@pytest.mark.parametrize("damage, hit, keep_staging, uploaded, downloaded", [case[1:] for case in REPAIRS],
                         ids=[case[0] for case in REPAIRS])
def test_rerun_repairs_the_bucket_uploading_only_what_is_wrong(images, bucket, tmp_path, damage, hit, keep_staging,
                                                               uploaded, downloaded):
    url = f"{bucket}/shards"
    staging = ["--staging", tmp_path / "staging"] if keep_staging else []
    assert run("ingest", images, "--out", url, *INGEST, *staging).exit_code == 0
    damage(_s3(), f"{url}/{hit}")
    result = run("ingest", images, "--out", url, *INGEST, *staging)
    assert result.exit_code == 0, result.output
    summary = result.stderr.strip().splitlines()[-1]
    if uploaded:
        assert f"uploaded {uploaded} shards" in summary and f"{5 - uploaded} shards already there" in summary
    else:
        assert "uploaded 0 shards (0.0 MB) and the manifest" in summary
    assert (f"({downloaded} checked by download)" in summary) == bool(downloaded), summary
    assert run("verify", "--data", url, "--stream").stdout.startswith("OK: 5 shards")


def test_killed_upload_leaves_no_manifest_and_a_rerun_uploads_the_rest(images, bucket, tmp_path):
    url = f"{bucket}/shards"
    cli_py = [sys.executable, os.path.join(ROOT, "cli.py"), "-q", "ingest", images, "--out", url, *INGEST,
              "--staging", str(tmp_path / "staging")]
    killed = subprocess.run(cli_py, env={**os.environ, CRASH_ENV: "upload:2"}, capture_output=True, text=True)
    assert killed.returncode == CRASH_EXIT, killed.stderr
    names = sorted(os.path.basename(p) for p in _s3().ls(url))
    assert "manifest.json" not in names and len(names) == 2  # the commit point is absent: incomplete
    with pytest.raises(UserError, match="no manifest.json at"):
        load_manifest(url)
    result = run("ingest", images, "--out", url, *INGEST, "--staging", tmp_path / "staging")
    assert "uploaded 3 shards" in result.stderr and "2 shards already there" in result.stderr, result.output
    assert run("verify", "--data", url, "--stream").stdout.startswith("OK: 5 shards")


def test_another_ingest_in_the_bucket_needs_force_which_removes_its_stale_shards(images, bucket):
    url = f"{bucket}/shards"
    assert run("ingest", images, "--out", url, "--size", "16x16", "--shard-size", "4", "--scheduler", "sync",
               ).exit_code == 0
    refused = one_error_line("ingest", images, "--out", url, *INGEST)
    assert "already holds shards from a different ingest" in refused and "--force" in refused
    assert run("ingest", images, "--out", url, *INGEST, "--force").exit_code == 0
    names = sorted(os.path.basename(p) for p in _s3().ls(url))
    assert names == sorted(["manifest.json", *(e["file"] for e in load_manifest(url).shards())]) and len(names) == 6


# (cached copy damage, verify, downloaded again)
CACHE_DAMAGE = [
    ("flipped bytes, checked by sha256", _flip, True, True),
    ("truncated, --no-verify still checks the size", lambda d: d[:-10], False, True),
    ("flipped bytes, --no-verify trusts the size", _flip, False, False),
]


@pytest.mark.parametrize("damage, verify, fetched", [c[1:] for c in CACHE_DAMAGE], ids=[c[0] for c in CACHE_DAMAGE])
def test_damaged_cached_copy_is_downloaded_again(built, bucket, tmp_path, damage, verify, fetched):
    url = f"{bucket}/shards"
    _publish(built, url)
    access = storage.Access(cache=str(tmp_path))
    manifest = storage.open_shards(url, access)
    path = os.path.join(manifest.folder, SHARD)
    good = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(damage(good))
    storage.open_shards(url, access, verify=verify)
    assert (open(path, "rb").read() == good) == fetched


def test_shard_damaged_in_the_bucket_is_named_when_caching(built, bucket, tmp_path):
    url = f"{bucket}/shards"
    _publish(built, url)
    _corrupt(_s3(), f"{url}/{SHARD}")
    with pytest.raises(UserError, match=f"{url}/{SHARD}: holds .* damaged or replaced in storage"):
        storage.open_shards(url, storage.Access(cache=str(tmp_path)))
    assert not os.path.exists(os.path.join(storage.cache_folder(url, str(tmp_path)), SHARD))
    cached = run("verify", "--data", url, "--cache", tmp_path)
    assert cached.exit_code == 1 and f"FAILED {url}/{SHARD}: holds" in cached.stdout
    streamed = run("verify", "--data", url, "--stream")
    assert streamed.exit_code == 1 and f"FAILED {url}/{SHARD}: sha256 differs" in streamed.stdout


HOSTILE_NAMES = ["../train-00000.h5", "x/../../train-00000.h5", "s3://elsewhere/train-00000.h5",
                 "/train-00000.h5", "..", "sub\\train-00000.h5"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_manifest_naming_a_file_outside_its_folder_is_refused(built, bucket, tmp_path, name):
    url = f"{bucket}/shards"
    _publish(built, url)
    fs = _s3()
    fs.pipe_file(f"{bucket}/train-00000.h5", b"a file beside the shard folder")
    manifest = json.loads(fs.cat_file(f"{url}/manifest.json"))
    manifest["shards"][0]["file"] = name
    fs.pipe_file(f"{url}/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(UserError, match="not a plain file name"):
        load_manifest(url)
    for command in (["verify", "--data", url, "--cache", tmp_path], ["info", "--data", url, "--runs", tmp_path]):
        result = run(*command)
        assert result.exit_code in (0, 2) and "not a plain file name" in result.output
    assert os.listdir(tmp_path) in ([], [os.path.basename(storage.cache_folder(url, str(tmp_path)))])
    assert not any(n.endswith(".h5") for _, _, names in os.walk(tmp_path) for n in names)


# (command line, what the single error line says)
REFUSALS = [
    (["verify", "--data", "gs://bucket/shards"], "pip install 'kibble[gcs]'"),
    (["train", "--data", "s3://b/shards", "--run-dir", "s3://b"], "a folder inside a bucket"),
    (["evaluate", "s3://kibble-no-such-bucket/runs/x"], "s3://kibble-no-such-bucket/runs/x is not a run directory"),
    (["evaluate", "--out", "memory://b/report"], "--out must be a local folder"),
    (["predict", "x.jpg", "--runs", "memory://kibble-no-runs/runs"], "no training run in memory://kibble-no-runs/runs/"),
    (["ingest", "s3://kibble-no-such-bucket/images", "--out", "memory://x"], "cannot list s3://kibble-no-such-bucket/images"),
    (["ingest", f"s3://AKIDX:{S3_SECRET}@b/images", "--out", "memory://x"], "not in the URL"),
    (["ingest", "s3://b/images", "--out", "shards", "--scheduler", "tcp://127.0.0.1:9"], "--shared-disk"),
    (["ingest", "images", "--out", "s3://b/shards", "--scheduler", "tcp://127.0.0.1:9"], "Received: INPUT=images"),
    (["verify", "--data", f"s3://AKIDX:{S3_SECRET}@b/shards"], "not in the URL"),
    (["verify", "--data", "s3://b/shards", "--cache", "s3://b/cache"], "--cache must be a local folder or `none`"),
    (["verify", "--data", "s3://kibble-no-such-bucket/shards", "--stream"], "no manifest.json at"),
    (["verify", "--data", "nosuchscheme://b/shards"], "nosuchscheme://b/shards"),
]


@pytest.mark.parametrize("argv, says", REFUSALS, ids=[" ".join(argv[:2]) + f" {i}" for i, (argv, _) in
                                                       enumerate(REFUSALS)])
def test_storage_refusals_are_one_error_line_naming_no_secret(s3_server, argv, says):
    line = one_error_line(*argv)
    assert says in line and S3_SECRET not in line
