"""`train --average DECAY`: an exponential moving average of the default model's weights, validated and saved.

The optimizer (AveragingAdamW, AdamW plus one slot per trainable weight)
updates the average after every step, inside the compiled train step:
average = d * average + (1 - d) * weight, with d = min(DECAY, (1 + t) / (10 + t))
at step t, so the first few hundred steps are not dominated by the
random start (TensorFlow's ExponentialMovingAverage with num_updates does
the same).

Validation scores the average, and every checkpoint (best.keras,
last.keras, mid-epoch ones) holds it as the model's weights: `evaluate`,
`predict` and any Keras user loading the file get the averaged model with
nothing to do. The weights being trained are kept in the file too, in
the optimizer's slot, the two trading places while the file is written
(`in_model`); a resumed run trades them back once (`resumed`).

Keras's own `use_ema` was not used: `model.fit` overwrites the trained
weights with the average when it returns, which a run resumed inside an
epoch (two fits) or stopped by a time budget would then train on.
"""
import contextlib
import functools


@functools.cache
def _optimizer_class():
    """AveragingAdamW, defined on first use so that importing train.averaging does not import TensorFlow."""
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="kibble", name="AveragingAdamW")
    class AveragingAdamW(keras.optimizers.AdamW):
        """AdamW that also keeps an exponential moving average of the weights it trains (`averages`)."""

        def __init__(self, *args, average_decay=0.999, **kwargs):
            super().__init__(*args, **kwargs)
            self.average_decay = float(average_decay)
            self.averages = []

        def build(self, variables):
            if self.built:
                return
            super().build(variables)
            # Set to the weights at the first step (apply): build usually runs inside the first trace of the
            # train step, where an assign of initial values does not survive TensorFlow's retrace.
            self.averages = self.add_optimizer_variables(variables, "average")

        def apply(self, grads, trainable_variables=None):
            if trainable_variables is None:  # model.fit and apply_gradients always name them
                raise ValueError("AveragingAdamW.apply needs the variables it trains, to average them")
            # Before the first step the average is the weights as they start.
            first = tf.cast(tf.equal(self.iterations, 0), tf.float32)
            for average, variable in zip(self.averages, trainable_variables):
                average.assign(first * tf.cast(variable, average.dtype) + (1.0 - first) * average)
            result = super().apply(grads, trainable_variables)
            # self.iterations counts the steps applied, this one included.
            steps = tf.cast(self.iterations, tf.float32)
            decay = tf.minimum(self.average_decay, (1.0 + steps) / (10.0 + steps))
            for average, variable in zip(self.averages, trainable_variables):
                average.assign(decay * average + (1.0 - decay) * tf.cast(variable, average.dtype))
            return result

        def get_config(self):
            return {**super().get_config(), "average_decay": self.average_decay}

    return AveragingAdamW


def averaging_adamw(learning_rate, weight_decay, average_decay):
    """An AdamW optimizer that keeps a moving average of the weights with `average_decay`."""
    return _optimizer_class()(learning_rate, weight_decay=weight_decay, average_decay=average_decay)


def register():
    """Make AveragingAdamW known to Keras, so that a checkpoint holding one loads with its optimizer."""
    _optimizer_class()


def averages(model):
    """The model's optimizer's moving averages (one per trainable weight), or None when it keeps none."""
    return getattr(getattr(model, "optimizer", None), "averages", None) or None


def swap(model):
    """Trade the model's trainable weights with its optimizer's averages (a no-op without averages)."""
    import tensorflow as tf

    slots = averages(model)
    if slots is None:
        return
    weights = model.trainable_variables
    if len(weights) != len(slots):
        raise ValueError(f"the optimizer averages {len(slots)} weights, the model trains {len(weights)}")
    for weight, slot in zip(weights, slots):
        held = tf.identity(weight.value)
        weight.assign(slot.value)
        slot.assign(held)


@contextlib.contextmanager
def in_model(model):
    """Inside: the model's weights are the averages (to validate or save it); after: the trained weights again."""
    swap(model)
    try:
        yield model
    finally:
        swap(model)


def resumed(model):
    """A checkpoint just loaded to go on training: its weights are the averages (see in_model); trade them back."""
    swap(model)


def average_statistics(model, decay):
    """Make each fused batch normalisation layer (train.fused) keep its moving statistics over the window of
    the weights' average: momentum min(decay, (1 + t) / (10 + t)) at step t instead of the layer's own. Returns
    the number of layers. The statistics are then those of the averaged model's window, not of the last few
    steps' weights; they are saved as usual. Layers Keras runs itself (fused batch norm off) keep their own.
    """
    import tensorflow as tf

    from train.fused import batch_norm_layers

    iterations = model.optimizer.iterations

    def momentum():
        steps = tf.cast(iterations, tf.float32)
        return tf.minimum(float(decay), (1.0 + steps) / (10.0 + steps))

    layers = batch_norm_layers(model)
    for layer in layers:
        layer.statistics_momentum = momentum
    if layers:
        model.train_function = None  # traced again with the new momentum
    return len(layers)


def validation_callback():
    """A Keras callback that validates the averaged weights: they are in the model from test begin to test end."""
    import keras

    class ValidateAverage(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            swap(self.model)

        def on_test_end(self, logs=None):
            swap(self.model)

    return ValidateAverage()
