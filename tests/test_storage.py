"""Shards in object storage (issue 12 items 1, 3, 7): --out and --data as URLs, against a real S3 server."""
import json
import os

import fsspec
import pytest
from click.testing import CliRunner

from cli import cli
from tests.conftest import S3_KEY_ID, S3_SECRET, make_kaggle_folder

INGEST = ["--size", "16x16", "--shard-size", "10", "--val", "0.2", "--test", "0.2", "--scheduler", "sync"]


def run(*args, env=None):
    result = CliRunner().invoke(cli, ["-q", *map(str, args)], env=env, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_kaggle_folder(str(tmp_path_factory.mktemp("storage") / "train"), cats=20, dogs=20)


def test_smoke(images, bucket, tmp_path):
    url = f"{bucket}/shards"
    r = run("ingest", images, "--out", url, *INGEST)
    print(r.output)
    assert r.exit_code == 0
    r = run("verify", "--data", url, "--cache", tmp_path / "cache")
    print(r.output)
    r = run("verify", "--data", url, "--stream")
    print(r.output)
    r = run("info", "--data", url, "--runs", tmp_path / "runs")
    print(r.output)
    r = run("ingest", images, "--out", url, *INGEST)
    print(r.output)
