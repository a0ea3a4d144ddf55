"""`train --label-smoothing SHARE`: the default model's cross-entropy against softened targets."""
import json
import math
import os

import numpy as np
import pytest

from shards.errors import UserError
from tests.conftest import assert_train_refuses, make_kaggle_shards
from train.rundir import RunDir
from train.run import TrainSettings, train


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("smoothing"), cats=16, dogs=16, size=(24, 32), shard_size=16,
                              val=0.25, test=0.25)


def _saved_loss(run_dir):
    import keras

    return keras.models.load_model(os.path.join(run_dir, "last.keras")).loss


def test_two_classes_train_against_targets_moved_toward_one_half_and_resume_keeps_the_share(shards_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    train(TrainSettings(data=shards_dir, train_size=16, val_size=8, epochs=1, batch_size=8, label_smoothing=0.2),
          run_dir=run_dir, progress=False)
    assert json.load(open(os.path.join(run_dir, "config.json")))["label_smoothing"] == 0.2
    loss = _saved_loss(run_dir)
    # a cat scored 0.8 is measured against the target 0.9, a dog against 0.1
    cat = -(0.9 * math.log(0.8) + 0.1 * math.log(0.2))
    assert float(loss(np.array([[1.0]]), np.array([[0.8]]))) == pytest.approx(cat, rel=1e-4)
    assert float(loss(np.array([[0.0]]), np.array([[0.2]]))) == pytest.approx(cat, rel=1e-4)
    # the targets' least loss is at 0.9, not at 1
    assert float(loss(np.array([[1.0]]), np.array([[0.9]]))) < float(loss(np.array([[1.0]]), np.array([[0.99]])))
    train(TrainSettings(epochs=2), run_dir=run_dir, resume=True, progress=False, given={"epochs"})
    assert [row["epoch"] for row in RunDir(run_dir).history()] == [1, 2]
    assert _saved_loss(run_dir).get_config()["label_smoothing"] == 0.2
    with pytest.raises(UserError, match=r"--label-smoothing 0.1 \(the run has 0.2\)"):
        train(TrainSettings(epochs=3, label_smoothing=0.1), run_dir=run_dir, resume=True, progress=False,
              given={"epochs", "label_smoothing"})


def test_without_smoothing_the_loss_stays_plain_cross_entropy(shards_dir, tmp_path):
    result = train(TrainSettings(data=shards_dir, train_size=16, val_size=8, epochs=1, batch_size=8),
                   runs_root=str(tmp_path), progress=False)
    assert _saved_loss(result["run_dir"]) == "binary_crossentropy"
    assert json.load(open(os.path.join(result["run_dir"], "config.json")))["label_smoothing"] == 0.0


def test_more_than_two_classes_smooth_over_one_hot_rows(tmp_path):
    from tests.test_multiclass_train import small_three_class_shards

    shards = small_three_class_shards(tmp_path)
    result = train(TrainSettings(data=shards, train_size=24, val_size=8, epochs=1, batch_size=8, label_smoothing=0.3),
                   runs_root=str(tmp_path / "runs"), progress=False)
    loss = _saved_loss(result["run_dir"])
    # the one-hot row (0, 1, 0) becomes (0.1, 0.8, 0.1)
    scores = np.array([[0.2, 0.5, 0.3]])
    expected = -(0.1 * math.log(0.2) + 0.8 * math.log(0.5) + 0.1 * math.log(0.3))
    assert float(loss(np.array([[0.0, 1.0, 0.0]]), scores)) == pytest.approx(expected, rel=1e-4)
    # a resume feeds the same one-hot rows to the categorical loss it loads (sparse labels would not fit it)
    train(TrainSettings(epochs=2), run_dir=result["run_dir"], resume=True, progress=False, given={"epochs"})
    rows = RunDir(result["run_dir"]).history()
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(0 <= row["val_accuracy"] <= 1 and np.isfinite(row["val_loss"]) for row in rows)
    # against softened targets the loss cannot fall below their own entropy
    floor = -(0.8 * math.log(0.8) + 2 * 0.1 * math.log(0.1))
    assert all(row["loss"] > floor and row["val_loss"] > floor for row in rows)


@pytest.mark.parametrize("args, message", [
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--label-smoothing", "0.1", "--model", "conv2"], "label_smoothing must be"),
    (["--label-smoothing", "0.1", "--loss", "mse"], "needs the cross-entropy"),
])
def test_a_wrong_share_a_tutorial_model_or_mse_is_refused_in_one_line(shards_dir, tmp_path, args, message):
    assert_train_refuses(shards_dir, tmp_path, args, message)
