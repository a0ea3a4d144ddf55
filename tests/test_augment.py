"""`train --augment standard|photo`: the default model's training augmentation (issue 11 item 3)."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from shards.errors import UserError
from tests.conftest import make_kaggle_shards
from train.precision import resolve_precision
from train.run import TrainSettings, train

SHAPE = (24, 32, 3)
# The default model's layers between the rescaling and the first convolution, per augmentation.
STANDARD = ["RandomFlip", "RandomTranslation", "RandomZoom", "RandomRotation"]
PHOTO = ["RandomFlip", "RandomZoom", "RandomTranslation", "RandomRotation", "RandomBrightness", "RandomContrast",
         "RandomSaturation", "RandomHue"]


def _stack(augment=None, seed=3):
    """The augmentation layers alone, as `_kibble` builds them on its rescaled input (`augment` None: the default)."""
    import keras

    from train.models import _augment

    keras.backend.clear_session()  # layer names restart, so two builds compare whole
    inputs = keras.Input(shape=SHAPE, dtype="float32")
    outputs = _augment(keras, inputs, seed, **({} if augment is None else {"augment": augment}))
    return keras.Model(inputs, outputs)


def _layers(model):
    return [layer for layer in model.layers if type(layer).__name__.startswith("Random")]


def test_standard_is_the_default_and_unchanged():
    import inspect

    from train.models import build_model

    default, standard = _stack(), _stack("standard")
    assert default.to_json() == standard.to_json()
    configs = [layer.get_config() for layer in _layers(default)]
    assert [type(layer).__name__ for layer in _layers(default)] == STANDARD
    assert [c["seed"] for c in configs] == [3, 3, 3, 3]  # one seed for all four, as before the option
    assert configs[0]["mode"] == "horizontal"
    assert (configs[1]["height_factor"], configs[1]["width_factor"]) == (0.1, 0.1)
    assert configs[2]["height_factor"] == (-0.15, 0.15) and configs[2]["width_factor"] is None
    assert configs[3]["factor"] == (-0.04, 0.04)
    assert inspect.signature(build_model).parameters["augment"].default == "standard"
    assert TrainSettings().augment == "standard"


def test_photo_changes_training_images_only_and_the_seed_decides():
    photo = _stack("photo")
    assert [type(layer).__name__ for layer in _layers(photo)] == PHOTO
    assert len({layer.get_config()["seed"] for layer in _layers(photo)}) == len(PHOTO)  # no two draw alike
    images = np.random.default_rng(0).integers(0, 256, (6, *SHAPE)).astype(np.float32) / 255
    trained_on = np.asarray(photo(images, training=True))
    assert np.abs(trained_on - images).mean() > 0.02
    assert np.array_equal(np.asarray(photo(images, training=False)), images)
    assert np.array_equal(np.asarray(_stack("photo")(images, training=True)), trained_on)
    assert not np.array_equal(np.asarray(_stack("photo", seed=4)(images, training=True)), trained_on)


def test_photo_model_predicts_as_standard_and_loads_without_custom_objects(tmp_path):
    import keras

    from train.models import build_model

    models = {}
    for augment in ("photo", "standard"):
        keras.utils.set_random_seed(0)
        models[augment] = build_model("kibble", SHAPE, seed=3, augment=augment)
    images = np.random.default_rng(1).integers(0, 256, (4, *SHAPE), dtype=np.uint8)
    expected = models["photo"].predict_on_batch(images)
    # Same weights (the augmentation draws from its own seeds): inference must not see the augmentation.
    assert np.array_equal(expected, models["standard"].predict_on_batch(images))
    path = str(tmp_path / "photo.keras")
    models["photo"].save(path)
    assert np.array_equal(keras.saving.load_model(path, compile=False).predict_on_batch(images), expected)


@pytest.fixture
def photo_run(tmp_path):
    """(run directory, shards, settings) of a default-model run with --augment photo, its one epoch committed.

    config.json is written by train's own `_config`; no model is trained (resume stops at "already done").
    """
    from shards import load_manifest
    from train.rundir import RunDir
    from train.run import _config

    shards = make_kaggle_shards(tmp_path, cats=12, dogs=12, size=(16, 16), val=0.25, test=0.1)
    settings = TrainSettings(data=shards, train_size=8, val_size=4, epochs=1, batch_size=4, augment="photo")
    settings = settings.resolved()
    settings = replace(settings, precision=resolve_precision(settings.precision))  # as train() records it
    run = RunDir(str(tmp_path / "run"))
    os.makedirs(run.path)
    with run.lock():
        run.start(_config(settings, load_manifest(shards), 1))
        with open(run.file("state.json"), "w") as f:
            json.dump({"epoch": 1, "best_epoch": 1, "best_val_loss": 0.5, "seconds": 1.0, "history": []}, f)
    return run.path, shards, settings


def test_config_keeps_photo_and_resume_keeps_it(photo_run):
    run_dir, shards, settings = photo_run
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["augment"] == "photo"
    same = train(TrainSettings(data=shards, augment="photo"), run_dir=run_dir, resume=True, progress=False,
                 given={"augment"})
    assert same["already_done"]
    with pytest.raises(UserError, match=r"cannot change settings .*--augment standard \(the run has photo\)"):
        train(TrainSettings(data=shards), run_dir=run_dir, resume=True, progress=False, given={"augment"})
    with pytest.raises(UserError, match="already holds a run with other settings"):
        train(replace(settings, augment="standard"), run_dir=run_dir, progress=False)
    assert train(settings, run_dir=run_dir, progress=False)["already_done"]  # the same settings: the same run


@pytest.mark.parametrize("args, expected", [
    (["--augment", "colour"], "Invalid value for '--augment'"),
    (["--model", "conv2", "--augment", "photo"], "augment must be one of standard, photo, and standard for the "
                                                 "tutorial's models"),
])
def test_a_wrong_augment_is_an_error_exit_2(tmp_path, args, expected):
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in result.output
