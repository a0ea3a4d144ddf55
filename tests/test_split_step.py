"""train.split_step: a step in two halves of the batch makes the same update as Keras's whole-batch step."""
import numpy as np
import pytest

from train.split_step import _split_train_step, split_steps


def _data(n=70, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, (n, 12, 10, 3)).astype("uint8")
    y = (x.reshape(n, -1).mean(axis=1) > 127).astype("float32")[:, None]
    return x, y


def _model(keras, batch_norm=False):
    inputs = keras.Input((12, 10, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def _train(split, loss="mse", class_weight=None):
    import keras

    keras.utils.set_random_seed(0)
    model = _model(keras)
    model.compile(keras.optimizers.Adam(1e-2), loss, metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])
    if split:
        assert split_steps(model)
        assert model.train_step.__func__ is _split_train_step
    x, y = _data()
    # 70 images in batches of 32: two whole batches and a last one of 6, split 3 + 3.
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False, class_weight=class_weight)
    return [w.numpy() for w in model.weights], history.history


@pytest.mark.parametrize("loss,class_weight", [("mse", None), ("binary_crossentropy", {0: 1.0, 1: 3.0})])
def test_split_step_makes_the_whole_batch_update(loss, class_weight):
    whole_weights, whole_history = _train(False, loss, class_weight)
    split_weights, split_history = _train(True, loss, class_weight)
    start = _train_start()
    assert max(float(np.abs(a - b).max()) for a, b in zip(whole_weights, start)) > 1e-3  # training moved them
    for a, b in zip(whole_weights, split_weights):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(split_history[key], whole_history[key], rtol=1e-4)


def _train_start():
    import keras

    keras.utils.set_random_seed(0)
    return [w.numpy() for w in _model(keras).weights]


def test_a_batch_of_one_is_taken_whole():
    import keras

    keras.utils.set_random_seed(0)
    model = _model(keras)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    split_steps(model)
    x, y = _data(n=1)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)


def test_models_with_batch_norm_are_left_alone():
    import keras

    model = _model(keras, batch_norm=True)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    assert not split_steps(model)
