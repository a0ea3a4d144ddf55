"""train.optimizers.fuse_adam: the fused kernel takes the same steps as Keras's Adam and AdamW, and saves as them."""
import numpy as np
import pytest

from train.fused import _fused_batch_norm_call, _fused_update_step, fuse_adam, fuse_batch_norm
from train.precision import dtype_policy, read_cpuinfo, supports_bfloat16


def _fit(optimizer_class, fused, steps=12, **kwargs):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(0)
    x = rng.rand(64, 40).astype("float32")
    y = (x.sum(axis=1) > 20).astype("float32")
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    optimizer = optimizer_class(1e-2, **kwargs)
    if fused:
        assert fuse_adam(optimizer)
        assert optimizer.update_step.__func__ is _fused_update_step
    model.compile(optimizer, "mse")
    model.fit(x, y, batch_size=16, epochs=steps // 4, verbose=0, shuffle=False)
    return model, [w.numpy() for w in model.weights] + [v.numpy() for v in optimizer.variables]


def _averaging(learning_rate, **kwargs):
    from train.averaging import averaging_adamw

    return averaging_adamw(learning_rate, kwargs["weight_decay"], 0.9)


@pytest.mark.parametrize("name,kwargs", [("Adam", {}), ("AdamW", {"weight_decay": 1e-2}),
                                         ("AveragingAdamW", {"weight_decay": 1e-2})])
def test_fused_steps_match_keras(name, kwargs):
    import keras

    optimizer_class = _averaging if name == "AveragingAdamW" else getattr(keras.optimizers, name)
    _, keras_values = _fit(optimizer_class, fused=False, **kwargs)
    _, fused_values = _fit(optimizer_class, fused=True, **kwargs)
    assert len(keras_values) == len(fused_values)
    moved = max(float(np.abs(a).max()) for a in keras_values)
    assert moved > 0.1  # the weights did move: the comparison is not of two untouched models
    for a, b in zip(keras_values, fused_values):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_other_optimizers_are_left_alone():
    import keras

    assert not fuse_adam(keras.optimizers.SGD(0.1))
    assert not fuse_adam(keras.optimizers.Adam(0.1, amsgrad=True))
    assert fuse_adam(keras.optimizers.Adam(0.1))

    class OwnStep(keras.optimizers.Adam):  # a subclass with an update of its own keeps it
        def update_step(self, gradient, variable, learning_rate):
            variable.assign_sub(learning_rate * gradient)

    assert not fuse_adam(OwnStep(0.1))


def test_a_fused_model_saves_and_resumes_as_keras_adam(tmp_path):
    import keras

    model, before = _fit(keras.optimizers.Adam, fused=True)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is keras.optimizers.Adam
    after = [w.numpy() for w in loaded.weights] + [v.numpy() for v in loaded.optimizer.variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _bn_model(keras):
    inputs = keras.Input((10, 12, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.8, center=False)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def _fit_bn(fused, monkeypatch=None):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (48, 10, 12, 3)).astype("uint8")
    y = (x[..., 0].mean(axis=(1, 2)) > 127).astype("float32")[:, None]
    model = _bn_model(keras)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    calls = []
    if fused:
        assert fuse_batch_norm(model) == 2
        assert all(layer.call.__func__ is _fused_batch_norm_call for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization))
        kernel = tf.compat.v1.nn.fused_batch_norm

        def counted(*args, **kwargs):
            calls.append(1)
            return kernel(*args, **kwargs)
        monkeypatch.setattr(tf.compat.v1.nn, "fused_batch_norm", counted)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    predictions = model.predict(x, verbose=0)
    return model, [w.numpy() for w in model.weights], predictions, calls


def test_fused_batch_norm_trains_as_keras_does(monkeypatch):
    _, keras_values, keras_predictions, _ = _fit_bn(False)
    model, fused_values, fused_predictions, calls = _fit_bn(True, monkeypatch)
    assert calls  # the fused kernel was traced into the training step
    names = [w.path for w in model.weights]
    assert any("moving_variance" in name for name in names)
    for name, a, b in zip(names, keras_values, fused_values):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(fused_predictions, keras_predictions, rtol=1e-4, atol=1e-5)


def test_batch_norm_inside_a_nested_model_is_fused_too():
    import keras

    inner = keras.Sequential([keras.Input((10, 12, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()])
    inputs = keras.Input((10, 12, 3))
    outer = keras.Model(inputs, keras.layers.BatchNormalization()(inner(inputs)))
    assert fuse_batch_norm(outer) == 2
    assert inner.layers[-1].call.__func__ is _fused_batch_norm_call


def test_a_fused_batch_norm_model_saves_as_keras_batch_norm(tmp_path, monkeypatch):
    import keras

    model, values, predictions, _ = _fit_bn(True, monkeypatch)
    path = str(tmp_path / "bn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers].count("BatchNormalization") == 2
    assert all("call" not in vars(layer) for layer in loaded.layers)  # Keras's own call again
    np.testing.assert_allclose(loaded.predict(np.zeros((2, 10, 12, 3), "uint8"), verbose=0),
                               model.predict(np.zeros((2, 10, 12, 3), "uint8"), verbose=0), rtol=1e-6)


@pytest.mark.skipif(not supports_bfloat16(read_cpuinfo() or ""),
                    reason="this CPU has neither AVX-512 BF16 nor AMX: train refuses bfloat16 here")
def test_fused_batch_norm_takes_bfloat16_as_it_is(monkeypatch):
    """Under mixed bfloat16 the kernel gets the bfloat16 tensor itself, and its step matches Keras's float32 one."""
    import keras
    import tensorflow as tf

    x = tf.cast(tf.random.stateless_normal([8, 9, 11, 5], seed=(1, 2)) * 3.0 + 1.0, tf.bfloat16)
    upstream = tf.random.stateless_normal([8, 9, 11, 5], seed=(3, 4))
    kernel, inputs = tf.compat.v1.nn.fused_batch_norm, []

    def spied(x, *args, **kwargs):
        inputs.append(x.dtype)
        return kernel(x, *args, **kwargs)
    monkeypatch.setattr(tf.compat.v1.nn, "fused_batch_norm", spied)
    results = []
    for fused in (False, True):
        with dtype_policy("bfloat16"):
            model = keras.Sequential([keras.Input((9, 11, 5)), keras.layers.BatchNormalization(momentum=0.9)])
        if fused:
            assert fuse_batch_norm(model) == 1
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
        layer = model.layers[0]
        gradients = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
        assert y.dtype == tf.bfloat16 and gradients[0].dtype == tf.bfloat16
        results.append([tf.cast(t, tf.float32).numpy() for t in [y, *gradients]]
                       + [layer.moving_mean.numpy(), layer.moving_variance.numpy()])
    assert inputs and set(inputs) == {tf.bfloat16}  # only the fused model calls it, with no float32 copy before
    names = ["output", "input gradient", "gamma gradient", "beta gradient", "moving mean", "moving variance"]
    for name, theirs, ours in zip(names, *results):
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(ours, theirs, atol=2e-2 * scale, err_msg=name)  # bfloat16 keeps 8 bits
