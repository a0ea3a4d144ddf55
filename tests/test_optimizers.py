"""train.optimizers.fuse_adam: the fused kernel takes the same steps as Keras's Adam and AdamW, and saves as them."""
import numpy as np
import pytest

from train.optimizers import _fused_update_step, fuse_adam


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


@pytest.mark.parametrize("name,kwargs", [("Adam", {}), ("AdamW", {"weight_decay": 1e-2})])
def test_fused_steps_match_keras(name, kwargs):
    import keras

    optimizer_class = getattr(keras.optimizers, name)
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
