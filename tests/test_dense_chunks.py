"""train.dense_chunks: Adam stepping the largest dense kernel block by block makes the fused whole-kernel update."""
import numpy as np
import pytest

from train import dense_chunks as chunks
from train.fused import as_train_runs_it, fuse_adam


def _data(n=70, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, (n, 12, 10, 3)).astype("uint8")
    y = (x.reshape(n, -1).mean(axis=1) > 127).astype("float32")[:, None]
    return x, y


def _model(keras, activation="relu"):
    inputs = keras.Input((12, 10, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)  # 10 x 8 x 4 = 320 inputs to the dense layer
    x = keras.layers.Dense(48, activation=activation)(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def _train(blocks, monkeypatch, optimizer="adam", loss="mse", class_weight=None, activation="relu"):
    import keras

    keras.utils.set_random_seed(0)
    model = _model(keras, activation)
    model.compile(keras.optimizers.Adam(3e-3) if optimizer == "adam" else optimizer, loss,
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])
    assert fuse_adam(model.optimizer)  # the step `train` takes otherwise
    names = [w.path for w in model.weights]
    if blocks:
        # 30 rows of 48 float32 per block: 11 blocks of the 320 rows, not all the same size.
        monkeypatch.setattr(chunks, "BLOCK_BYTES", 30 * 48 * 4)
        assert chunks._blocks(320, 48)[-1] == (290, 320) and len(chunks._blocks(320, 48)) == 11
        assert chunks.dense_chunks(model)
        assert [w.path for w in model.weights] == names  # nothing new tracked: checkpoints hold the same weights
    x, y = _data()
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False, class_weight=class_weight)
    return model, history.history


@pytest.mark.parametrize("activation,loss,class_weight", [
    ("relu", "mse", None), ("relu", "binary_crossentropy", {0: 1.0, 1: 3.0}), (None, "mse", None)])
def test_blocks_make_the_fused_whole_kernel_update(monkeypatch, activation, loss, class_weight):
    import keras

    whole, whole_history = _train(False, monkeypatch, loss=loss, class_weight=class_weight, activation=activation)
    blocked, blocked_history = _train(True, monkeypatch, loss=loss, class_weight=class_weight, activation=activation)
    keras.utils.set_random_seed(0)
    start = [w.numpy() for w in _model(keras, activation).weights]
    kernel = blocked.layers[4].kernel.numpy()
    assert float(np.abs(kernel - start[2]).max()) > 1e-3  # training moved the blocked kernel
    for a, b in zip(whole.weights + whole.optimizer.variables, blocked.weights + blocked.optimizer.variables):
        assert a.shape == b.shape
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-9, err_msg=a.path)
    assert int(blocked.optimizer.iterations.numpy()) == 6  # 70 images in batches of 32, two epochs
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(blocked_history[key], whole_history[key], rtol=1e-6)


def test_a_blocked_model_saves_and_loads_as_keras_model(monkeypatch, tmp_path):
    import keras

    model, _ = _train(True, monkeypatch)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model.weights + model.optimizer.variables, loaded.weights + loaded.optimizer.variables):
        np.testing.assert_array_equal(b.numpy(), a.numpy())
    x, _ = _data(n=5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize("case", ["adamw", "amsgrad", "tanh"])
def test_what_the_blocks_do_not_cover_is_left_alone(case):
    import keras

    model = _model(keras, "tanh" if case == "tanh" else "relu")
    optimizer = {"adamw": keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                 "amsgrad": keras.optimizers.Adam(1e-3, amsgrad=True)}.get(case, keras.optimizers.Adam(1e-3))
    model.compile(optimizer, "mse")
    step = model.train_step
    assert not chunks.dense_chunks(model)
    assert model.train_step == step


def test_train_turns_it_on_for_conv1_only_when_asked(monkeypatch):
    import keras

    def installed(name, setting):
        monkeypatch.setenv("KIBBLE_PROCESS", setting)
        model = _model(keras)
        model.compile(keras.optimizers.Adam(1e-3), "mse")
        as_train_runs_it(model, name)
        return model.train_step.__func__.func is chunks._dense_chunks_train_step \
            if hasattr(model.train_step.__func__, "func") else False

    assert installed("conv1", "dense_chunks=1")
    assert not installed("conv1", "")  # off by default
    assert not installed("conv2", "dense_chunks=1")
