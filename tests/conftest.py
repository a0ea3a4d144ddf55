import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SAMPLE = os.path.join(ROOT, "..", "shared", "datasets", "kaggle-sample")

# Generated images carry their label in their pixels: cats are reddish,
# dogs bluish, and the green channel encodes the file number, so a test can
# tell from pixels alone which file and label an image came from.
CAT_COLOUR, DOG_COLOUR = 200, 40


def colour_for(label, number):
    red = CAT_COLOUR if label == 1 else DOG_COLOUR
    return (red, number % 256, 255 - red)


def make_image(path, label, number, size=(60, 48), fmt=None, mode="RGB"):
    image = Image.new("RGB", size, colour_for(label, number))
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt, quality=95)
    return path


def make_kaggle_folder(folder, cats=20, dogs=20, start=0):
    """A Kaggle-style train/ folder of small solid-colour JPEGs of varied sizes."""
    os.makedirs(folder, exist_ok=True)
    for label, kind, count in ((1, "cat", cats), (0, "dog", dogs)):
        for i in range(start, start + count):
            size = (40 + (i * 7) % 50, 30 + (i * 11) % 40)
            make_image(os.path.join(folder, f"{kind}.{i}.jpg"), label, i, size=size)
    return folder


def make_kaggle_shards(root, cats=20, dogs=20, size=(8, 8), shard_size=8, val=0.2, test=0.1):
    """Shards (root/shards) of a generated Kaggle-style folder (root/train), ingested in this process."""
    from ingest import IngestSettings, ingest

    src = make_kaggle_folder(os.path.join(str(root), "train"), cats=cats, dogs=dogs)
    out = os.path.join(str(root), "shards")
    ingest(src, out, IngestSettings(size=size, shard_size=shard_size, val=val, test=test),
           scheduler="sync", progress=False)
    return out


def train_tiny_conv2(root, size):
    """(image folder, shard folder, run directory) under root: 12 generated pictures per class, a 1-epoch conv2."""
    from ingest import IngestSettings, ingest
    from ingest.synthetic import make_demo_images
    from train.run import TrainSettings, train

    images = make_demo_images(os.path.join(str(root), "images"), per_class=12, seed=1)
    shards = os.path.join(str(root), "shards")
    ingest(images, shards, IngestSettings(size=size, shard_size=8, val=0.25, test=0.25), scheduler="sync",
           progress=False)
    settings = TrainSettings(data=shards, model="conv2", train_size=12, val_size=6, epochs=1, batch_size=4, lr=1e-3,
                             loss="bce")
    return images, shards, train(settings, runs_root=os.path.join(str(root), "runs"), progress=False)["run_dir"]


def assert_train_refuses(shards_dir, runs, args, message):
    """`train` on these shards with `args` stops with exit code 2 and one line naming `message`, no traceback."""
    from click.testing import CliRunner

    from cli import cli

    result = CliRunner().invoke(cli, ["train", "--data", shards_dir, "--runs", str(runs), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def read_split(shard_dir, split):
    """(images, labels, names) of a whole split of a shard folder, read back from its shards."""
    from shards import ShardReader, load_manifest

    manifest = load_manifest(shard_dir)
    images, labels, names = [], [], []
    for entry in manifest.shards(split):
        with ShardReader(manifest.shard_path(entry)) as shard:
            images.append(shard.read(0, shard.count))
            labels.append(shard.labels)
            names += shard.names
    return np.concatenate(images), np.concatenate(labels), names


@pytest.fixture
def kaggle_dir(tmp_path):
    return make_kaggle_folder(str(tmp_path / "train"))


@pytest.fixture
def sample_dir():
    if not os.path.isdir(SAMPLE):
        pytest.skip("../shared/datasets/kaggle-sample is not available")
    return SAMPLE


def decoded_label(image):
    """Label encoded by make_image, read back from a (resized) image."""
    red = float(np.mean(image[..., 0]))
    return 1 if abs(red - CAT_COLOUR) < abs(red - DOG_COLOUR) else 0


# Dummy credentials for the S3 server below; tests grep outputs for them.
S3_KEY_ID, S3_SECRET = "AKIAKIBBLETESTKEY0001", "kibble-test-secret-do-not-write-0001"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto's, over HTTP on loopback) for the session; yields its endpoint URL.

    The usual environment variables point s3fs (and every subprocess) at it,
    with dummy credentials; they are restored when the session ends.
    """
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture
def bucket(s3_server, request):
    """A new empty bucket for one test; yields its s3:// URL."""
    import re

    import fsspec

    import uuid

    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:30].strip("-") + "-" + uuid.uuid4().hex[:12]
    fs = fsspec.filesystem("s3")
    fs.mkdir(name)
    return f"s3://{name}"
