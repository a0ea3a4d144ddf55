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
STANDARD = ["Augment"]
PHOTO = ["Augment", "RandomBrightness", "RandomContrast", "RandomSaturation", "RandomHue"]


def _stack(augment=None, seed=3):
    """The augmentation layers alone, as `_kibble` builds them on its rescaled input (`augment` None: the default)."""
    import keras

    from train.models import _augment

    keras.backend.clear_session()  # layer names restart, so two builds compare whole
    inputs = keras.Input(shape=SHAPE, dtype="float32")
    outputs = _augment(keras, inputs, seed, **({} if augment is None else {"augment": augment}))
    return keras.Model(inputs, outputs)


def _layers(model):
    return [layer for layer in model.layers if type(layer).__name__ in STANDARD + PHOTO]


def test_standard_is_the_default_and_unchanged():
    import inspect

    from train.models import build_model

    default, standard = _stack(), _stack("standard")
    assert default.to_json() == standard.to_json()
    assert [type(layer).__name__ for layer in _layers(default)] == STANDARD
    config = _layers(default)[0].get_config()
    # The draws of Keras's RandomFlip, RandomTranslation(0.1, 0.1), RandomZoom((-0.15, 0.15)) and
    # RandomRotation(0.04), which it replaced, from the same seed.
    assert (config["shift"], config["zoom"], config["zoom_width"], config["rotation"], config["seed"]) == (
        0.1, (-0.15, 0.15), None, 0.04, 3)
    assert inspect.signature(build_model).parameters["augment"].default == "standard"
    assert TrainSettings().augment == "standard"


def test_photo_changes_training_images_only_and_the_seed_decides():
    photo = _stack("photo")
    assert [type(layer).__name__ for layer in _layers(photo)] == PHOTO
    assert len({layer.get_config()["seed"] for layer in _layers(photo)}) == len(PHOTO)  # no two draw alike
    config = _layers(photo)[0].get_config()
    assert (config["zoom"], config["zoom_width"]) == ((-0.3, 0.1), (-0.3, 0.1))  # crops of other aspects
    images = np.random.default_rng(0).integers(0, 256, (6, *SHAPE)).astype(np.float32) / 255
    trained_on = np.asarray(photo(images, training=True))
    assert np.abs(trained_on - images).mean() > 0.02
    assert np.array_equal(np.asarray(photo(images, training=False)), images)
    assert np.array_equal(np.asarray(_stack("photo")(images, training=True)), trained_on)
    assert not np.array_equal(np.asarray(_stack("photo", seed=4)(images, training=True)), trained_on)


def test_photo_model_predicts_as_standard_and_loads_with_kibbles_layers(tmp_path):
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
    loaded = keras.saving.load_model(path, compile=False)
    assert type(loaded.get_layer("augment")).__name__ == "Augment"
    assert np.array_equal(loaded.predict_on_batch(images), expected)


# kibble>Augment: the four geometric layers' draws made in one resampling.

def _augment_layer(**kwargs):
    from train.models import augment_layer

    return augment_layer()(**{"shift": 0.0, "zoom": (0.0, 0.0), "rotation": 0.0, "seed": 5, **kwargs})


def _dot(shape=(41, 61), at=(10, 45)):
    image = np.zeros((*shape, 3), np.float32)
    image[at[0] - 1:at[0] + 2, at[1] - 1:at[1] + 2] = 1.0
    return image


def _centre_of_mass(images):
    weights = images[..., 0]
    ys, xs = np.mgrid[0:images.shape[1], 0:images.shape[2]]
    total = weights.sum(axis=(1, 2))
    return (weights * ys).sum(axis=(1, 2)) / total, (weights * xs).sum(axis=(1, 2)) / total


def test_augment_with_no_ranges_mirrors_half_the_images_exactly():
    images = np.random.default_rng(2).random((32, *SHAPE)).astype(np.float32)
    out = np.asarray(_augment_layer()(images, training=True))
    same = [np.allclose(o, i, atol=1e-6) for o, i in zip(out, images)]
    mirrored = [np.allclose(o, i[:, ::-1], atol=1e-6) for o, i in zip(out, images)]
    assert all(a != b for a, b in zip(same, mirrored))  # each image is one or the other
    assert 6 <= sum(mirrored) <= 26
    assert np.array_equal(np.asarray(_augment_layer()(images, training=False)), images)


def test_augment_zooms_as_keras_random_zoom():
    import keras

    images = np.random.default_rng(3).random((8, 30, 40, 3)).astype(np.float32)
    for factor in (0.3, -0.2):  # above 0 shows more of the image, below 0 less
        keras_zoomed = np.asarray(keras.layers.RandomZoom((factor, factor), fill_mode="reflect")(images, training=True))
        ours = np.asarray(_augment_layer(zoom=(factor, factor))(images, training=True))
        for o, k in zip(ours, keras_zoomed):
            assert np.allclose(o, k, atol=1e-4) or np.allclose(o, k[:, ::-1], atol=1e-4)
    wide = np.asarray(_augment_layer(zoom=(0.0, 0.0), zoom_width=(0.5, 0.5))(_dot()[None], training=True))[0]
    columns = np.flatnonzero(wide[..., 0].max(axis=0) > 0.2)
    rows = np.flatnonzero(wide[..., 0].max(axis=1) > 0.2)
    inside = columns[(columns > 5) & (columns < 55)]  # the columns near the edges show its reflection
    assert list(rows) == [9, 10, 11] and len(inside) <= 3  # narrower, not lower: 3 columns become 2
    assert abs(abs(inside.mean() - 30) - 15 / 1.5) <= 1  # and 1.5 times nearer the centre


def test_augment_shifts_and_turns_within_its_ranges():
    shape, at = (41, 61), (10, 45)
    dots = np.repeat(_dot(shape, at)[None], 64, axis=0)
    centre = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2])
    ys, xs = _centre_of_mass(np.asarray(_augment_layer(shift=0.2)(dots, training=True)))
    xs = np.where(np.abs(xs - at[1]) < np.abs(xs - (shape[1] - 1 - at[1])), xs, shape[1] - 1 - xs)  # undo mirrors
    assert np.abs(ys - at[0]).max() <= 0.2 * shape[0] + 0.5 and np.abs(xs - at[1]).max() <= 0.2 * shape[1] + 0.5
    assert np.abs(ys - at[0]).max() > 0.1 * shape[0] and (ys < at[0]).any() and (ys > at[0]).any()
    ys, xs = _centre_of_mass(np.asarray(_augment_layer(rotation=0.05)(dots, training=True)))
    radius = np.hypot(*(np.array(at) - centre))
    assert np.allclose(np.hypot(ys - centre[0], xs - centre[1]), radius, atol=0.5)  # about the centre
    start = np.arctan2(at[0] - centre[0], at[1] - centre[1])
    turns = np.minimum(np.abs(np.arctan2(ys - centre[0], xs - centre[1]) - start),
                       np.abs(np.arctan2(ys - centre[0], centre[1] - xs) - start))  # a mirrored dot, unmirrored
    assert turns.max() <= 0.05 * 2 * np.pi + 0.02 and turns.max() > 0.02 * 2 * np.pi


def test_augment_takes_any_size_and_keeps_it():
    layer = _augment_layer(shift=0.1, zoom=(-0.15, 0.15), rotation=0.04)
    for shape in ((2, 17, 23, 3), (3, 40, 31, 3)):
        assert np.asarray(layer(np.ones(shape, np.float32), training=True)).shape == shape


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
