"""Multi-worker training (issue 12 item 5): two worker processes on loopback, TF_CONFIG,
tf.distribute.MultiWorkerMirroredStrategy, the loop of train.distributed fed by
make_dataset's worker split; compared with one process running the same loop.

model.fit itself fails under this strategy with this Keras (train/distributed.py);
this test shows the part that works, and that nothing of it pretends.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from shards.iterate import worker_batches
from shards.manifest import load_manifest
from tests.conftest import ROOT, make_kaggle_shards

EPOCHS, BATCH = 3, 4


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("multi-worker"), cats=20, dogs=21, val=0.2, test=0.1)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(shards, out, index, ports, batch):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    if ports:
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": index}})
    code = f"from tests.test_multi_worker import _worker; _worker({shards!r}, {out!r}, {batch})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def _worker(shards, out, batch):
    """One process of the test: train a tiny model with fit_replicated, write what it ended with."""
    import keras
    import tensorflow as tf

    from train.distributed import fit_replicated, worker_of_tf_config
    from train.pipeline import make_dataset
    from shards.iterate import iterate_batches

    index, workers = worker_of_tf_config()
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if workers > 1 else tf.distribute.get_strategy()
    manifest = load_manifest(shards)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.Adam(0.05))
        model.optimizer.build(model.trainable_variables)
    loss = keras.losses.BinaryCrossentropy(reduction=None)
    losses = fit_replicated(strategy, model, loss, lambda epoch, i, n: make_dataset(
        manifest, "train", batch, seed=1, initial_epoch=epoch, worker_index=i, num_workers=n), EPOCHS)
    right = total = 0
    for images, labels in iterate_batches(manifest, "val", 16, shuffle=False):
        predicted = model(images, training=False).numpy()[:, 0] > 0.5
        right, total = right + int((predicted == (labels == 1)).sum()), total + len(labels)
    with open(os.path.join(out, f"worker-{workers}-{index}.json"), "w") as f:
        json.dump({"losses": losses, "accuracy": right / total, "iterations": int(model.optimizer.iterations.numpy()),
                   "weights": [float(w) for w in np.concatenate([np.ravel(w) for w in model.get_weights()])]}, f)


def test_two_workers_train_in_step_on_disjoint_parts_as_well_as_one_process(shards_dir, tmp_path):
    assert "TF_CONFIG" not in os.environ, "the test starts its own cluster"
    ports = _free_ports(2)
    procs = [_start(shards_dir, str(tmp_path), i, ports, BATCH) for i in (0, 1)]
    _worker(shards_dir, str(tmp_path), 2 * BATCH)  # one process (this one), the same global batch, meanwhile
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    two = [json.load(open(tmp_path / f"worker-2-{i}.json")) for i in (0, 1)]
    one = json.load(open(tmp_path / "worker-1-0.json"))
    count = load_manifest(shards_dir).split_count("train")
    # each worker stepped once per batch of its part, and the parts have equal batch counts
    assert two[0]["iterations"] == two[1]["iterations"] == EPOCHS * worker_batches(count, BATCH, 2)
    # the gradients were all-reduced: both workers hold the same model, and saw the same losses
    np.testing.assert_allclose(two[0]["weights"], two[1]["weights"], rtol=0, atol=1e-6)
    assert two[0]["losses"] == pytest.approx(two[1]["losses"])
    assert two[0]["losses"][-1] < two[0]["losses"][0]
    # the colours make the classes separable: both ways learn them, to within noise of each other
    assert two[0]["accuracy"] >= 0.9 and one["accuracy"] >= 0.9
    assert abs(two[0]["accuracy"] - one["accuracy"]) <= 0.1
