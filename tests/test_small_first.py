"""`train --small-first SHARE`: the default model's first epochs on smaller images, then the shards' size."""
import json
import os
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from kibble.predict import predict
from shards import load_manifest
from shards.errors import UserError
from tests.conftest import make_kaggle_shards
from train.run import SMALL_SCALE, TrainSettings, small_epoch, train
from train.rundir import RunDir

SIZE = (24, 32)
SMALL = (16, 22)  # SIZE x SMALL_SCALE, rounded


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("small-first"), cats=30, dogs=30, size=SIZE,
                              shard_size=16, val=0.25, test=0.25)


def test_the_pipeline_resizes_each_batch_to_the_size_the_variable_holds(shards_dir):
    import tensorflow as tf

    from train.pipeline import image_size_variable, make_dataset, smaller_size

    manifest = load_manifest(shards_dir)
    assert smaller_size(manifest.image_shape, SMALL_SCALE) == SMALL
    size = image_size_variable(manifest.image_shape)
    plain = make_dataset(manifest, "train", 8, 24, seed=3, shuffle=True)
    resized = make_dataset(manifest, "train", 8, 24, seed=3, shuffle=True, size=size)
    [full_batch], [same] = [[images for images, _ in data.take(1)] for data in (plain, resized)]
    np.testing.assert_array_equal(same.numpy(), full_batch.numpy())  # the shards' size: passed as it is
    # Keras makes an epoch's iterator at the end of the epoch before, and its first batch is asked for
    # after on_epoch_begin (which sets the size): tf.data makes nothing before it is asked for.
    epoch = iter(make_dataset(manifest, "train", 8, 24, seed=3, shuffle=True, size=size))  # epoch 0 again
    time.sleep(0.5)
    size.assign(list(SMALL))
    small, labels = next(epoch)
    assert small.shape == (8, *SMALL, 3) and small.dtype == tf.uint8 and labels.shape == (8, 1)
    expected = np.round(tf.image.resize(full_batch, SMALL, method="area").numpy()).clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(small.numpy(), expected)


def test_half_the_epochs_train_small_and_the_model_takes_the_shards_size_after(shards_dir, tmp_path):
    import keras

    from evaluate.run import evaluate_run

    run_dir = str(tmp_path / "run")
    settings = TrainSettings(data=shards_dir, train_size=24, val_size=12, epochs=4, batch_size=8, small_first=0.5)
    result = train(settings, run_dir=run_dir, progress=False)
    rows = RunDir(run_dir).history()
    assert [row["scale"] for row in rows] == [SMALL_SCALE, SMALL_SCALE, 1.0, 1.0]
    assert result["small_epochs"] == 2
    assert json.load(open(os.path.join(run_dir, "config.json")))["small_first"] == 0.5
    model = keras.models.load_model(os.path.join(run_dir, "best.keras"), compile=False)
    assert tuple(model.inputs[0].shape[1:]) == (None, None, 3)
    # evaluate and predict read it as a model of the shards' size
    metrics = evaluate_run(run_dir, splits=("val",), progress=False)
    assert metrics["splits"]["val"]["count"] == load_manifest(shards_dir).split_count("val")
    # It takes any size, but evaluate holds it to the size it was trained for.
    other = make_kaggle_shards(tmp_path / "other", cats=4, dogs=4, size=(20, 28), shard_size=8, val=0.25, test=0.25)
    with pytest.raises(UserError, match=r"was trained on images of 24x32, but the shards in .* hold 20x28; "
                                        r"pass --data with shards ingested at --size 24x32"):
        evaluate_run(run_dir, data=other, splits=("val",), progress=False)
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(tmp_path / "photo.jpg")
    [found] = list(predict([str(tmp_path / "photo.jpg")], run_dir))
    assert found["error"] is None and 0.0 <= found["p_cat"] <= 1.0

    # Extended to 6 epochs: never back to small images once an epoch has trained at the shards' size.
    train(TrainSettings(epochs=6), run_dir=run_dir, resume=True, progress=False, given={"epochs"})
    assert [row["scale"] for row in RunDir(run_dir).history()][4:] == [1.0, 1.0]


def test_the_switch_follows_the_time_budget_and_never_goes_back():
    budget = TrainSettings(minutes=10.0, small_first=0.5)
    small_row, full_row = {"scale": SMALL_SCALE}, {"scale": 1.0}
    assert small_epoch(budget, {"epoch": 3, "seconds": 299.0, "history": [small_row] * 3})
    assert not small_epoch(budget, {"epoch": 3, "seconds": 300.0, "history": [small_row] * 3})
    # Extended from 10 to 30 minutes after it switched: 310 s is a sixth of the new budget, still full size.
    assert not small_epoch(TrainSettings(minutes=30.0, small_first=0.5),
                           {"epoch": 4, "seconds": 310.0, "history": [small_row] * 3 + [full_row]})
    # Resumed inside the epoch that began at 290 s: it ends at the size it began with, whatever its own seconds.
    assert small_epoch(budget, {"epoch": 3, "seconds": 290.0, "batches": 200, "epoch_seconds": 80.0,
                                "history": [small_row] * 3})
    # An epoch cap with the budget: whichever share is larger.
    assert not small_epoch(TrainSettings(minutes=10.0, epochs=4, small_first=0.5),
                           {"epoch": 2, "seconds": 10.0, "history": [small_row] * 2})
    assert not small_epoch(TrainSettings(minutes=10.0, small_first=0.0), {"epoch": 0, "seconds": 0.0, "history": []})


@pytest.mark.parametrize("settings, message", [
    (TrainSettings(small_first=1.0), "small_first must be a share"),
    (TrainSettings(small_first=-0.1), "small_first must be a share"),
    (TrainSettings(small_first=0.5, model="conv2"), "0 for the tutorial's models"),
])
def test_impossible_shares_are_refused(settings, message):
    with pytest.raises(UserError, match=message):
        settings.validate()


def test_the_command_line_refuses_a_share_of_one():
    result = CliRunner().invoke(cli, ["train", "--small-first", "1"])
    assert result.exit_code == 2 and "--small-first" in result.output
