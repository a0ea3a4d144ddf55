"""`train --upscale FACTOR`: the default model enlarges its input first, so every layer works on larger maps."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kibble.predict import predict
from shards.errors import UserError
from tests.conftest import assert_train_refuses, make_kaggle_shards
from train.run import TrainSettings, train
from train.rundir import RunDir

SIZE = (24, 32)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("upscale"), cats=24, dogs=24, size=SIZE,
                              shard_size=16, val=0.25, test=0.25)


def _upscaled(model, images):
    """What the model's upscale layer makes of `images` (uint8 batch), as a numpy array."""
    import keras

    return keras.Model(model.inputs, model.get_layer("upscale").output)(images).numpy()


@pytest.mark.parametrize("factor", [1.5, 1.25])
def test_the_layer_enlarges_images_of_any_size_bilinearly(factor):
    import tensorflow as tf

    from train.models import build_model, scaled_size

    model = build_model("kibble", (*SIZE, 3), any_size=True, upscale=factor)
    rng = np.random.default_rng(0)
    for size in (SIZE, (16, 22), (10, 10)):
        images = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
        wanted = scaled_size(size, factor)
        expected = tf.image.resize(images.astype(np.float32) / 255, wanted, method="bilinear").numpy()
        np.testing.assert_allclose(_upscaled(model, images), expected, atol=1e-6)
    fixed = build_model("kibble", (*SIZE, 3), upscale=factor)
    assert tuple(fixed.get_layer("upscale").output.shape[1:]) == (*scaled_size(SIZE, factor), 3)


@pytest.mark.parametrize("factor, side, wanted", [(1.25, 22, 28), (1.25, 26, 32), (1.3, 95, 124), (1.36, 94, 128),
                                                  (1.36, 125, 170)])
def test_the_graph_rounds_the_size_as_the_declared_shape_does(factor, side, wanted):
    """Halves round to even (22 x 1.25 = 27.5 -> 28, 26 x 1.25 = 32.5 -> 32); 95 x 1.3 is 123.50000000000001 in
    float64 (124), 123.49999 in float32 (123)."""
    from train.models import build_model, scaled_size

    model = build_model("kibble", (side, side, 3), upscale=factor)
    declared = tuple(model.get_layer("upscale").output.shape[1:3])
    made = _upscaled(model, np.zeros((1, side, side, 3), np.uint8)).shape[1:3]
    assert declared == made == scaled_size((side, side), factor) == (wanted, wanted)


def test_without_the_option_the_model_has_no_such_layer_and_the_tutorial_models_refuse_it():
    from train.models import build_model

    assert "upscale" not in [layer.name for layer in build_model("kibble", (*SIZE, 3)).layers]
    with pytest.raises(ValueError, match="upscale must be from 1"):
        build_model("conv2", (*SIZE, 3), upscale=1.5)
    with pytest.raises(ValueError, match="upscale must be from 1"):
        build_model("kibble", (*SIZE, 3), upscale=0.8)


def test_a_run_records_it_resumes_with_it_and_evaluate_and_predict_load_it_in_a_new_process(shards_dir, tmp_path):
    import keras

    run_dir = str(tmp_path / "run")
    settings = TrainSettings(data=shards_dir, train_size=24, val_size=12, epochs=2, batch_size=8, small_first=0.5,
                             bn_images=16, upscale=1.5)
    train(settings, run_dir=run_dir, progress=False)
    assert json.load(open(os.path.join(run_dir, "config.json")))["upscale"] == 1.5
    model = keras.models.load_model(os.path.join(run_dir, "best.keras"), compile=False)
    assert model.get_layer("upscale").factor == 1.5
    # The first convolution (stride 2) sees the images enlarged: 36x48 from 24x32.
    first_conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    probe = keras.Model(model.inputs, first_conv.output)
    assert probe(np.zeros((1, *SIZE, 3), np.uint8)).shape[1:3] == (18, 24)

    # Resumed to 3 epochs: the checkpoint loads with its layer; another factor is refused.
    with pytest.raises(UserError, match=r"--upscale 2.0 \(the run has 1.5\)"):
        train(TrainSettings(epochs=3, upscale=2.0), run_dir=run_dir, resume=True, progress=False,
              given={"epochs", "upscale"})
    train(TrainSettings(epochs=3), run_dir=run_dir, resume=True, progress=False, given={"epochs"})
    assert len(RunDir(run_dir).history()) == 3

    # A new process, where nothing has defined the layer yet: evaluate's loader must register it.
    out = tmp_path / "eval"
    done = subprocess.run([sys.executable, "cli.py", "evaluate", run_dir, "--split", "val", "--out", str(out),
                           "--no-verify"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["splits"]["val"]["count"] == 12
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(tmp_path / "photo.jpg")
    [found] = list(predict([str(tmp_path / "photo.jpg")], run_dir))
    assert found["error"] is None and 0.0 <= found["p_cat"] <= 1.0


@pytest.mark.parametrize("args, message", [
    (["--upscale", "0.9"], "--upscale"),
    (["--upscale", "nan"], "--upscale"),
    (["--upscale", "1.5", "--model", "conv2"], "upscale must be from 1"),
])
def test_a_wrong_factor_or_a_tutorial_model_is_refused_in_one_line(shards_dir, tmp_path, args, message):
    assert_train_refuses(shards_dir, tmp_path, args, message)
