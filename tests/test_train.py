import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from shards import load_manifest
from shards.errors import UserError
from tests.conftest import ROOT, make_kaggle_shards
from train.run import TrainSettings, train
from train.rundir import RunDir, Runs

SIZE = (24, 32)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("train-data"), cats=60, dogs=60, size=SIZE,
                              shard_size=16, val=0.2, test=0.2)


@pytest.mark.parametrize("model", ["mlp", "conv1", "conv2", "conv2-wide", "kibble"])
def test_each_model_trains_an_epoch_and_saves_a_loadable_model(shards_dir, tmp_path, model):
    import keras

    result = train(TrainSettings(data=shards_dir, model=model, train_size=32, val_size=16, epochs=1,
                                 batch_size=16), runs_root=str(tmp_path), progress=False)
    run = result["run_dir"]
    assert Runs(str(tmp_path)).latest().path == run and result["epochs"] == 1
    loaded = keras.models.load_model(os.path.join(run, "best.keras"))
    scores = loaded.predict(np.zeros((2, *SIZE, 3), np.uint8), verbose=0)
    assert scores.shape == (2, 1) and np.all((scores >= 0) & (scores <= 1))
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["model"] == model and config["image_size"] == list(SIZE) and config["params"] > 0
    assert config["manifest_sha256"] == load_manifest(shards_dir).checksum
    # The recipe's smaller images first, moving average and enlarged input: the default model's alone.
    assert (config["small_first"], config["average"], config["bn_images"], config["upscale"]) == \
        ((0.5, 0.999, 1000, 1.36) if model == "kibble" else (0.0, 0.0, 0, 1.0))
    [row] = RunDir(run).history()
    assert row["epoch"] == 1 and set(row) >= {"loss", "val_loss", "accuracy", "val_accuracy", "seconds"}
    assert os.path.isdir(os.path.join(run, "logs"))


def test_killed_run_resumes_to_the_full_number_of_epochs(shards_dir, tmp_path):
    runs = tmp_path / "runs"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from train.run import TrainSettings, train\n"
        "train(TrainSettings(data=sys.argv[2], model='conv2', train_size=72, val_size=16, epochs=8, "
        "batch_size=8), runs_root=sys.argv[3], progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, ROOT, shards_dir, str(runs)])
    state_file = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = list(runs.glob("*/state.json")) if runs.exists() else []
        if found and json.load(open(found[0]))["epoch"] >= 1:
            state_file = found[0]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state_file is not None
    done = json.load(open(state_file))["epoch"]
    assert 1 <= done < 8, "the run finished before it could be killed"
    # the same command again continues it
    result = train(TrainSettings(data=shards_dir, model="conv2", train_size=72, val_size=16, epochs=8,
                                 batch_size=8), runs_root=str(runs), progress=False)
    assert result["run_dir"] == str(state_file.parent) and result["epochs"] == 8
    assert [row["epoch"] for row in RunDir(result["run_dir"]).history()] == list(range(1, 9))
    again = train(TrainSettings(), runs_root=str(runs), resume=True, progress=False)
    assert again["already_done"]


def test_no_shards_says_to_run_ingest(tmp_path):
    with pytest.raises(UserError, match="run `ingest` first"):
        train(TrainSettings(data=str(tmp_path / "nothing")), runs_root=str(tmp_path / "runs"))


def test_more_images_than_exist_names_what_exists(shards_dir, tmp_path):
    with pytest.raises(UserError, match="holds 72"):
        train(TrainSettings(data=shards_dir, model="mlp", train_size=500, val_size=8),
              runs_root=str(tmp_path))
    assert not (tmp_path / "LATEST").exists()


def test_damaged_shard_is_refused_before_training(shards_dir, tmp_path):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards_dir, copy)
    victim = copy / "train-00002.h5"
    data = bytearray(victim.read_bytes())
    data[-50] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(UserError, match="train-00002.h5.*sha256"):
        train(TrainSettings(data=str(copy), model="mlp", train_size=32, val_size=8, epochs=1),
              runs_root=str(tmp_path / "runs"))


def test_shard_vanishing_during_training_names_it_and_stays_resumable(shards_dir, tmp_path):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards_dir, copy)
    os.remove(copy / "train-00003.h5")
    with pytest.raises(UserError, match=r"train-00003.h5.*--resume"):
        train(TrainSettings(data=str(copy), model="mlp", train_size=72, val_size=8, epochs=2, batch_size=8),
              runs_root=str(tmp_path / "runs"), verify=False, progress=False)


def test_invalid_settings_name_the_option():
    with pytest.raises(UserError, match="model must be one of"):
        train(TrainSettings(model="resnet"))
    with pytest.raises(UserError, match="batch_size must be at least 1"):
        train(TrainSettings(batch_size=0))


def test_the_batch_size_and_rate_come_from_the_models_recipe():
    kibble, conv2 = TrainSettings().resolved(), TrainSettings(model="conv2").resolved()
    assert (kibble.batch_size, kibble.lr) == (16, 1.4e-3)
    assert (conv2.batch_size, conv2.lr) == (32, 1e-4)
    # each given value is kept; a batch given alone keeps the recipe's rate
    assert (TrainSettings(batch_size=64).resolved().batch_size, TrainSettings(batch_size=64).resolved().lr) \
        == (64, 1.4e-3)
    assert TrainSettings(batch_size=64, lr=1e-3).resolved().lr == 1e-3


def test_the_default_models_recipe_trains_smaller_images_first_and_averages_its_weights():
    kibble, conv2 = TrainSettings().resolved(), TrainSettings(model="conv2").resolved()
    assert (kibble.small_first, kibble.average, kibble.bn_images, kibble.upscale) == (0.5, 0.999, 1000, 1.36)
    assert (conv2.small_first, conv2.average, conv2.bn_images, conv2.upscale) == (0.0, 0.0, 0, 1.0)
    plain = TrainSettings(small_first=0.0, average=0.0, bn_images=0, upscale=1.0).resolved()  # given is kept
    assert (plain.small_first, plain.average, plain.bn_images, plain.upscale) == (0.0, 0.0, 0, 1.0)
    assert TrainSettings(average=0.99).resolved().average == 0.99
    TrainSettings(model="conv2").validate()
    with pytest.raises(UserError, match="small_first must be"):
        TrainSettings(model="conv2", small_first=0.5).validate()


def test_the_weight_decay_comes_from_the_recipe_and_only_the_default_model_takes_it():
    from train.models import RECIPES

    assert TrainSettings().resolved().weight_decay == RECIPES["kibble"][4] > 0
    assert TrainSettings(model="conv2").resolved().weight_decay == 0.0
    assert TrainSettings(weight_decay=0.0).resolved().weight_decay == 0.0  # given, even when 0, is kept
    assert TrainSettings(weight_decay=0.05).resolved().weight_decay == 0.05
    TrainSettings(model="conv2", weight_decay=0.0).validate()
    for bad, model in ((0.1, "conv2"), (-0.1, "kibble"), (1.0, "kibble"), (float("nan"), "kibble"), (True, "kibble")):
        with pytest.raises(UserError, match="weight_decay must be"):
            TrainSettings(model=model, weight_decay=bad).validate()


def test_the_weight_decay_reaches_adamw_and_a_run_from_before_it_keeps_the_old_one(shards_dir, tmp_path):
    import keras

    settings = TrainSettings(data=shards_dir, train_size=16, val_size=8, epochs=1, batch_size=8, weight_decay=0.05)
    run = train(settings, runs_root=str(tmp_path), progress=False)["run_dir"]
    assert json.load(open(os.path.join(run, "config.json")))["weight_decay"] == 0.05
    assert keras.models.load_model(os.path.join(run, "last.keras")).optimizer.weight_decay == pytest.approx(0.05)
    # A config.json from before the setting: the default model then always had 1e-4.
    old = replace(settings, weight_decay=1e-4)
    run = train(old, runs_root=str(tmp_path), progress=False)["run_dir"]
    path = os.path.join(run, "config.json")
    config = json.load(open(path))
    del config["weight_decay"]
    json.dump(config, open(path, "w"))
    assert train(old, run_dir=run, progress=False)["already_done"]
    with pytest.raises(UserError, match="other settings"):
        train(settings, run_dir=run, progress=False)
    with pytest.raises(UserError, match=r"--weight-decay 0.05 \(the run has 0.0001\)"):
        train(replace(settings, epochs=2), run_dir=run, resume=True, given={"epochs", "weight_decay"},
              progress=False)
    assert train(TrainSettings(epochs=2), run_dir=run, resume=True, given={"epochs"}, progress=False)["epochs"] == 2


def test_a_run_started_with_another_batch_resumes_with_its_own(shards_dir, tmp_path):
    # A run whose batch and rate are not its model's recipe (as a default-model run from before its recipe took
    # batches of 16) keeps them on --resume; the mlp, for speed.
    old = TrainSettings(data=shards_dir, model="mlp", train_size=64, val_size=16, epochs=1, batch_size=8, lr=2e-3)
    run = train(old, runs_root=str(tmp_path), progress=False)["run_dir"]
    result = train(TrainSettings(epochs=2), runs_root=str(tmp_path), resume=True, given={"epochs"},
                   progress=False)
    assert result["run_dir"] == run and result["epochs"] == 2
    config = json.load(open(os.path.join(run, "config.json")))
    assert (config["batch_size"], config["lr"]) == (8, 2e-3)
    assert [row["batches"] for row in RunDir(run).history()] == [8, 8]
    # without --resume, the recipe's batch (32) is another setting than the run's
    with pytest.raises(UserError, match="other settings"):
        train(TrainSettings(data=shards_dir, model="mlp", train_size=64, val_size=16, epochs=2, lr=2e-3),
              run_dir=run, progress=False)
    again = train(TrainSettings(data=shards_dir, model="mlp", train_size=64, val_size=16, epochs=1),
                  runs_root=str(tmp_path), progress=False)
    assert [row["batches"] for row in RunDir(again["run_dir"]).history()] == [2]


# The settings the first config.json held: every one written since holds them.
FIRST_SETTINGS = {"data", "model", "train_size", "val_size", "epochs", "lr", "loss", "batch_size", "seed", "window"}


def test_every_later_setting_says_what_an_older_config_without_it_meant():
    """A setting added without that would resume old runs with its present default, whatever they meant."""
    from dataclasses import fields

    from train.run import FIXED_ON_RESUME, _with_old_defaults

    names = {f.name for f in fields(TrainSettings)}
    first = {name: getattr(TrainSettings(), name) for name in FIRST_SETTINGS}
    config = _with_old_defaults(first)
    assert set(config) == names, f"no meaning for a config.json without {sorted(names - set(config))}"
    assert config["weight_decay"] == 1e-4 and config["precision"] == "float32" and config["small_first"] == 0.0
    assert config["upscale"] == 1.0  # runs before the recipe enlarged its images rebuild without the layer
    assert _with_old_defaults({**first, "model": "conv2"})["weight_decay"] == 0.0
    assert _with_old_defaults({**first, "average": 0.99})["average"] == 0.99  # what the file holds wins
    assert set(FIXED_ON_RESUME) == names - {"epochs", "minutes"}
