"""`train --bn-images N`: batch normalisation's statistics recomputed on training images as inference sees them.

A BatchNormalization layer normalises with the batch's own mean and
variance in training and with its moving averages of them at inference.
Those averages are taken over training batches, so they describe the
images training sees: augmented (shifted, zoomed and rotated with
reflected borders), smaller in the first epochs of a `--small-first`
run, and produced by older weights (over a thousand steps with
`--average`'s decay). Inference sees none of that, and the mismatch moves
the outputs: the default model's p(cat) ran low (thresholds chosen on
validation at 0.23-0.44 instead of 0.5).

Before each validation, `refresh` runs the model on N training images at
the shards' size without its augmentation (in inference mode, where Keras's
random layers pass images through), each batch normalised
by its own statistics as in training, and sets every layer's moving mean
and variance to the mean and (biased) variance of that layer's input over
all N images; a mid-epoch checkpoint is refreshed the same way before it is
written. Validation, checkpoints, `evaluate` and `predict` then use
statistics of the images they see. The trained weights are untouched.
"""

# Images per forward pass of `refresh`: larger batches than training's, each normalised by its own moments.
BATCH = 50


def _moments_layer(layer):
    """A Keras layer that normalises its input as batch normalisation `layer` trains (the batch's own moments,
    `layer`'s scale and offset) and also returns the per-channel mean and mean square of the input, in float32."""
    import keras
    import tensorflow as tf

    class BatchMoments(keras.layers.Layer):
        def call(self, inputs):
            x = tf.cast(inputs, tf.float32)
            axes = list(range(len(x.shape) - 1))
            mean = tf.reduce_mean(x, axes)
            square = tf.reduce_mean(tf.square(x), axes)
            variance = tf.maximum(square - tf.square(mean), 0.0)
            scale = tf.cast(layer.gamma, tf.float32) if layer.scale else None
            offset = tf.cast(layer.beta, tf.float32) if layer.center else None
            outputs = tf.nn.batch_normalization(x, mean, variance, offset, scale, layer.epsilon)
            return tf.cast(outputs, inputs.dtype), mean, square

    return BatchMoments(name=f"{layer.name}_moments", dtype=layer.dtype_policy)


def moments_model(model):
    """(probe, layers): a Keras model sharing `model`'s weights that returns, for a batch of images, the mean and
    mean square of each batch normalisation layer's input (in `layers`' order, two outputs per layer), every
    batch normalisation using the batch's moments. Called in inference mode, so the augmentation layers pass
    the images through. None when the model has no batch normalisation or is not a functional model."""
    import keras

    from train.fused import batch_norm_layers

    layers = batch_norm_layers(model)
    if not layers or isinstance(model, keras.Sequential) or not getattr(model, "inputs", None):
        return None, []
    wanted, found = set(map(id, layers)), {}

    def call(layer, *args, **kwargs):
        if id(layer) in wanted:
            outputs, mean, square = _moments_layer(layer)(args[0])
            found[id(layer)] = (mean, square)
            return outputs
        return layer(*args, **kwargs)

    # An uncompiled view: cloning a compiled model would compile the clone, with an optimizer of its own.
    view = keras.Model(model.inputs, model.outputs)
    clone = keras.models.clone_model(view, clone_function=lambda layer: layer, call_function=call)
    layers = [layer for layer in layers if id(layer) in found]  # nested models' layers are not reached
    outputs = [tensor for layer in layers for tensor in found[id(layer)]]
    return keras.Model(clone.inputs, outputs, name=f"{model.name}_moments"), layers


class Refresher:
    """Sets a model's batch normalisation statistics from batches of images (`refresh`), its probe built once."""

    def __init__(self, model):
        import tensorflow as tf

        self.probe, self.layers = moments_model(model)
        # Inference mode: Keras's random augmentation layers pass their input through, dropout drops nothing.
        self._moments = tf.function(lambda images: self.probe(images, training=False), reduce_retracing=True) \
            if self.probe else None

    def refresh(self, batches):
        """Set each batch normalisation layer's moving mean and variance to the mean and variance of its input over
        every image of `batches` (an iterable of uint8 image batches, or of (images, labels) pairs). Returns the
        number of images; 0 (nothing changed) when there were none or the model has no batch normalisation."""
        import numpy as np

        if self.probe is None:
            return 0
        sums, count = None, 0
        for batch in batches:
            images = batch[0] if isinstance(batch, tuple) else batch
            n = int(images.shape[0])
            outputs = [np.asarray(t, dtype=np.float64) * n for t in self._moments(images)]
            sums = outputs if sums is None else [s + o for s, o in zip(sums, outputs)]
            count += n
        if not count:
            return 0
        for i, layer in enumerate(self.layers):
            mean, square = sums[2 * i] / count, sums[2 * i + 1] / count
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign(np.maximum(square - mean ** 2, 0.0).astype(np.float32))
        return count


def batch_size(images):
    """The batch size that cuts `images` into batches of at most BATCH as even as can be (1001: 21 of 47-48), so
    that no small last batch normalises the deeper layers by the moments of a few images."""
    batches = -(-images // BATCH)
    return -(-images // batches)


def refresh_callback(model, images):
    """A Keras callback refreshing `model`'s statistics from `images` (a dataset of training batches, iterated
    anew each time) at each validation's start; its `refresh()` does the same at any other moment (a mid-epoch
    checkpoint). Put it after train.averaging's callback, which puts the averaged weights in the model at the
    same moment: the statistics are then the average's."""
    import keras

    refresher = Refresher(model)

    class RefreshStatistics(keras.callbacks.Callback):
        def refresh(self):
            refresher.refresh(images)

        def on_test_begin(self, logs=None):
            self.refresh()

    return RefreshStatistics()
