"""Batch normalisation's statistics recomputed on training images as inference sees them (train.statistics)."""
import json
import os

import numpy as np
import pytest

from shards import load_manifest
from tests.conftest import assert_train_refuses, make_kaggle_shards
from train.rundir import RunDir
from train.run import TrainSettings, train

SIZE = (24, 32)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("statistics"), cats=24, dogs=24, size=SIZE, shard_size=16,
                              val=0.25, test=0.25)


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SIZE, 3), dtype=np.uint8)


def _augmented_and_plain():
    """(model, plain): the same layers (shared weights), `model` with a random shift in front of them, `plain`
    without it. Batch normalisation's scale and offset are set away from 1 and 0 so that they count."""
    import keras

    L = keras.layers
    layers = [L.Conv2D(6, 3, padding="same"), L.BatchNormalization(), L.Activation("relu"),
              L.Conv2D(5, 3, strides=2, padding="same"), L.BatchNormalization(), L.Activation("relu"),
              L.GlobalAveragePooling2D(), L.Dense(1, activation="sigmoid")]

    def body(x):
        for layer in layers:
            x = layer(x)
        return x

    inputs = keras.Input((*SIZE, 3), dtype="uint8")
    x = L.Rescaling(1 / 255)(inputs)
    model = keras.Model(inputs, body(L.RandomTranslation(0.3, 0.3, seed=1)(x)))
    plain = keras.Model(inputs, body(x))
    rng = np.random.default_rng(1)
    for layer in (layers[1], layers[4]):
        layer.gamma.assign(rng.uniform(0.5, 2.0, layer.gamma.shape))
        layer.beta.assign(rng.normal(0.0, 0.5, layer.beta.shape))
    return model, plain, layers


def test_after_a_refresh_inference_gives_what_training_gives_without_the_augmentation():
    from train.statistics import Refresher

    model, plain, _ = _augmented_and_plain()
    images = _images(40)
    before = model.predict(images, verbose=0)
    assert Refresher(model).refresh([images]) == 40
    # Keras's own training-mode pass without the shift normalises each layer by this batch's own statistics:
    # inference now uses those same statistics
    expected = np.asarray(plain(images, training=True))
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(before, expected, atol=1e-3)  # the statistics at initialisation were not these


def test_the_statistics_are_those_of_every_image_of_every_batch():
    import keras

    from train.statistics import Refresher

    model, plain, layers = _augmented_and_plain()
    images = _images(30, seed=2)
    weights = [w.numpy() for w in model.weights if w.trainable]
    assert Refresher(model).refresh([images[:12], (images[12:], np.zeros(18))]) == 30  # (images, labels) too
    # the first layer's input: the convolution of the unshifted images
    conv = keras.Model(plain.inputs, layers[0].output).predict(images, verbose=0).astype(np.float64)
    np.testing.assert_allclose(layers[1].moving_mean.numpy(), conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layers[1].moving_variance.numpy(), conv.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-6)
    for weight, value in zip([w for w in model.weights if w.trainable], weights):
        np.testing.assert_array_equal(weight.numpy(), value)  # only the statistics change


def test_a_model_without_batch_normalisation_is_left_as_it_is():
    from train.models import build_model
    from train.statistics import Refresher

    model = build_model("conv2", (*SIZE, 3))
    before = [w.numpy() for w in model.weights]
    assert Refresher(model).refresh([_images(8)]) == 0
    for weight, value in zip(model.weights, before):
        np.testing.assert_array_equal(weight.numpy(), value)


def _statistics(model):
    from train.fused import batch_norm_layers

    return [v.numpy() for layer in batch_norm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]


def _first_images(shards_dir):
    """The first 8 training images at the shards' size, in train's batches for 8 (the deeper layers' statistics
    depend on the batches: each is normalised by its own moments)."""
    from train.pipeline import make_dataset
    from train.statistics import batch_size

    return make_dataset(load_manifest(shards_dir), "train", batch_size(8), 8, 0, shuffle=False)


def _refreshed_equal(model, first):
    """Whether `model`'s statistics are those a refresh of its weights on `first` gives (the model is refreshed)."""
    from train.statistics import Refresher

    saved = _statistics(model)
    Refresher(model).refresh(first)
    return all(np.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(saved, _statistics(model)))


@pytest.mark.parametrize("average, small_first", [(0.0, 0.0), (0.9, 0.5)])
def test_every_checkpoint_holds_the_statistics_of_the_first_training_images_and_validation_used_them(
        shards_dir, tmp_path, monkeypatch, average, small_first):
    import keras

    from train.averaging import register
    from train.pipeline import make_dataset
    from train.run import CheckpointEvery

    register()
    first = _first_images(shards_dir)
    commit, mid_epoch = RunDir.commit_epoch, []

    def spying(self, model, state):
        if "batches" in state:  # a mid-epoch checkpoint, about to be written
            mid_epoch.append(_refreshed_equal(model, first))
        return commit(self, model, state)

    monkeypatch.setattr(RunDir, "commit_epoch", spying)
    run_dir = str(tmp_path / "run")
    # two epochs (with small_first, the first on smaller images): the second refresh is of new weights
    train(TrainSettings(data=shards_dir, train_size=24, val_size=12, epochs=2, batch_size=4, lr=0.02,
                        average=average, small_first=small_first, bn_images=8), run_dir=run_dir, progress=False,
          checkpoint_every=CheckpointEvery(batches=2))
    assert json.load(open(os.path.join(run_dir, "config.json")))["bn_images"] == 8
    assert mid_epoch == [True] * 4  # after batches 2 and 4 of each epoch's 6
    # the file's weights (the average, with --average) with the statistics of the first 8 training images
    model = keras.models.load_model(os.path.join(run_dir, "last.keras"))
    assert _refreshed_equal(model, first)
    # history's val_loss is that of the file's model, statistics included
    val = make_dataset(load_manifest(shards_dir), "val", 4, 12, 0, shuffle=False)
    model.compile(loss="binary_crossentropy")
    row = RunDir(run_dir).history()[-1]
    assert model.evaluate(val, verbose=0, return_dict=True)["loss"] == pytest.approx(row["val_loss"], rel=1e-3)


def test_without_it_the_checkpoint_holds_the_averages_training_kept(shards_dir, tmp_path):
    import keras

    run_dir = str(tmp_path / "run")
    train(TrainSettings(data=shards_dir, train_size=24, val_size=12, epochs=1, batch_size=4, lr=0.02,
                        average=0.0, small_first=0.0, bn_images=0), run_dir=run_dir, progress=False)
    assert not _refreshed_equal(keras.models.load_model(os.path.join(run_dir, "last.keras")),
                                _first_images(shards_dir))


def test_batches_are_cut_evenly():
    from train.statistics import BATCH, batch_size

    assert [batch_size(n) for n in (1, 8, BATCH, BATCH + 1, 1000, 1001)] == [1, 8, BATCH, 26, 50, 48]


@pytest.mark.parametrize("args, message", [
    (["--bn-images", "-1"], "--bn-images"),
    (["--bn-images", "100", "--model", "conv2"], "bn_images must be"),
])
def test_a_wrong_count_or_a_tutorial_model_is_refused_in_one_line(shards_dir, tmp_path, args, message):
    assert_train_refuses(shards_dir, tmp_path, args, message)
