"""`train --average DECAY`: a moving average of the weights, validated, saved as the checkpoints' weights, resumed."""
import json
import os

import numpy as np
import pytest

from shards import load_manifest
from shards.errors import UserError
from tests.conftest import assert_train_refuses, make_kaggle_shards
from train.rundir import RunDir
from train.run import TrainSettings, train

SIZE = (24, 32)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("average"), cats=24, dogs=24, size=SIZE, shard_size=16,
                              val=0.25, test=0.25)


def test_the_average_follows_every_step_with_its_decay_warmed_up():
    import keras

    from train.averaging import averaging_adamw

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(averaging_adamw(0.05, 1e-3, 0.9), "binary_crossentropy")
    start = [w.numpy().copy() for w in model.trainable_variables]
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append([w.numpy().copy() for w in self.model.trainable_variables])

    x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype("float32")
    model.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0, callbacks=[Record()])
    # one step: the average starts at the weights (2/11 of them), not at zero
    for ours, first, trained in zip(model.optimizer.averages, start, seen[0]):
        np.testing.assert_allclose(ours.numpy(), 2 / 11 * first + 9 / 11 * trained, rtol=1e-5, atol=1e-6)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[Record()])
    assert len(seen) == 25
    expected = start
    for step, weights in enumerate(seen, start=1):
        decay = min(0.9, (1 + step) / (10 + step))
        expected = [decay * a + (1 - decay) * w for a, w in zip(expected, weights)]
    for ours, theirs, trained in zip(model.optimizer.averages, expected, seen[-1]):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-6)
        assert not np.allclose(ours.numpy(), trained, atol=1e-4)  # an average, not the last weights


def test_batch_norm_statistics_average_over_the_same_window_as_the_weights():
    import keras

    from train.averaging import average_statistics, averaging_adamw
    from train.fused import fuse_batch_norm

    keras.utils.set_random_seed(1)
    inputs = keras.Input((4, 4, 2))
    norm = keras.layers.BatchNormalization(momentum=0.5)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(norm(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(averaging_adamw(0.01, 0.0, 0.9), "binary_crossentropy")
    assert fuse_batch_norm(model) == 1 and average_statistics(model, 0.9) == 1
    x = np.random.default_rng(2).normal(3.0, 2.0, (96, 4, 4, 2)).astype("float32")
    model.fit(x, np.ones(96, "float32"), epochs=1, batch_size=8, verbose=0, shuffle=False)
    # the layer is the model's first: its batch means are the inputs' own, step t (from 0) with decay
    # min(0.9, (1 + t) / (10 + t)) instead of the layer's 0.5
    expected = np.zeros(2)
    for step in range(12):
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * x[step * 8:(step + 1) * 8].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(norm.moving_mean.numpy(), expected, rtol=1e-4)


def _file_weights(path):
    """(the model's trainable weights, the optimizer's average slots) as saved in a checkpoint."""
    import keras

    from train.averaging import register

    register()
    model = keras.models.load_model(path)
    return [w.numpy() for w in model.trainable_variables], [a.numpy() for a in model.optimizer.averages], model


def test_validation_scores_the_average_and_the_checkpoint_holds_it_as_the_models_weights(shards_dir, tmp_path):
    from train.pipeline import make_dataset

    run_dir = str(tmp_path / "run")
    train(TrainSettings(data=shards_dir, train_size=24, val_size=12, epochs=1, batch_size=4, average=0.9, lr=0.02),
          run_dir=run_dir, progress=False)
    assert json.load(open(os.path.join(run_dir, "config.json")))["average"] == 0.9
    averaged, trained, model = _file_weights(os.path.join(run_dir, "last.keras"))
    val = make_dataset(load_manifest(shards_dir), "val", 4, 12, 0, shuffle=False)
    [row] = RunDir(run_dir).history()
    # history's val_loss is the loss of the weights the file holds as the model's: the average ...
    assert model.evaluate(val, verbose=0, return_dict=True)["loss"] == pytest.approx(row["val_loss"], rel=1e-3)
    # ... and not that of the weights trained, which the file keeps in the optimizer's slot
    for weight, value in zip(model.trainable_variables, trained):
        weight.assign(value)
    assert model.evaluate(val, verbose=0, return_dict=True)["loss"] != pytest.approx(row["val_loss"], rel=1e-2)


def test_a_resumed_run_trains_on_the_trained_weights_and_keeps_its_decay(shards_dir, tmp_path):
    from train.pipeline import worker_batches
    from train.run import _model

    run_dir = str(tmp_path / "run")
    settings = TrainSettings(data=shards_dir, train_size=24, val_size=12, epochs=1, batch_size=8, average=0.9,
                             lr=0.02)
    train(settings, run_dir=run_dir, progress=False)
    averaged, trained, _ = _file_weights(os.path.join(run_dir, "last.keras"))
    assert any(not np.allclose(a, t, atol=1e-4) for a, t in zip(averaged, trained))
    # what a resume loads: the trained weights back in the model, the average back in its slot
    run = RunDir(run_dir)
    config = json.load(open(os.path.join(run_dir, "config.json")))
    with run.lock():
        model, _ = _model(run, TrainSettings(**{**config_settings(config), "epochs": 2}), load_manifest(shards_dir),
                          run.recover(), worker_batches(24, 8))
    for weight, value in zip(model.trainable_variables, trained):
        np.testing.assert_array_equal(weight.numpy(), value)
    for slot, value in zip(model.optimizer.averages, averaged):
        np.testing.assert_array_equal(slot.numpy(), value)
    # and the whole resume trains on, keeping the decay and refusing another
    train(TrainSettings(epochs=2), run_dir=run_dir, resume=True, progress=False, given={"epochs"})
    assert [row["epoch"] for row in RunDir(run_dir).history()] == [1, 2]
    assert json.load(open(os.path.join(run_dir, "config.json")))["average"] == 0.9
    with pytest.raises(UserError, match="average"):
        train(TrainSettings(epochs=3, average=0.99), run_dir=run_dir, resume=True, progress=False,
              given={"epochs", "average"})


def config_settings(config):
    """The TrainSettings fields of a config.json."""
    from dataclasses import fields

    return {f.name: config[f.name] for f in fields(TrainSettings) if f.name in config}


def test_a_run_without_average_saves_plain_adamw(shards_dir, tmp_path):
    result = train(TrainSettings(data=shards_dir, train_size=16, val_size=8, epochs=1, batch_size=8, average=0.0),
                   runs_root=str(tmp_path), progress=False)
    config = json.load(open(os.path.join(result["run_dir"], "config.json")))
    assert config["average"] == 0.0
    import keras

    optimizer = keras.models.load_model(os.path.join(result["run_dir"], "last.keras")).optimizer
    assert type(optimizer).__name__ == "AdamW"


@pytest.mark.parametrize("args, message", [
    (["--average", "1"], "--average"),
    (["--average", "0.999", "--model", "conv2"], "average must be"),
])
def test_a_wrong_decay_or_a_tutorial_model_is_refused_in_one_line(shards_dir, tmp_path, args, message):
    assert_train_refuses(shards_dir, tmp_path, args, message)
