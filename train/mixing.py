"""CutMix (`train --cutmix SHARE`): a patch of another training image pasted into a share of the images.

The patch covers a uniformly drawn share of the image (before it is cut
at the edges) around a uniformly drawn centre, and the label becomes the
mix of the two labels by the area each image keeps: a photo that is 30%
cat patch on a dog is 0.3 cat. It regularises a model that has learnt its
training set by heart (the default model on 10,000 images after about 40
minutes, docs/results.md).

It runs in the input pipeline (train.pipeline.make_dataset), on each window
of images after it is mixed and before it is cut into batches: each image
takes its patch from the next one in the window. The draws are stateless,
seeded by the run's seed, the epoch and the window, so a run is redone
exactly. Labels: two classes keep one float32 column (the share of class
index 1); more classes become one-hot float32 rows (categorical instead of
sparse cross-entropy, for validation too).
"""
import functools

# Raised by make_dataset's windows into a stateless seed: (run seed, epoch * _EPOCH + skip * _SKIP + window).
_EPOCH = 2**40
_SKIP = 2**20


def window_seed(seed, epoch, skip_batches, window):
    """The stateless seed pair of one window's draws."""
    return [int(seed), int(epoch) * _EPOCH + int(skip_batches) * _SKIP + int(window)]


def cutmix(images, labels, share, seed):
    """(images, labels) with a patch of the next image pasted into about `share` of them.

    images: uint8 (n, H, W, 3); labels: float32 (n, k), k = 1 (two classes) or
    one-hot; seed: a stateless seed pair (window_seed). The last image takes
    its patch from the first.
    """
    import tensorflow as tf

    n, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    chosen = tf.random.stateless_uniform([n], seeds[0]) < share
    side = tf.sqrt(tf.random.stateless_uniform([n], seeds[1]))  # of each dimension: the patch's share of the area
    centre = tf.random.stateless_uniform([n, 2], seeds[2])

    def inside(centre, size):
        low = tf.cast(tf.round(tf.clip_by_value(centre - side / 2, 0.0, 1.0) * tf.cast(size, tf.float32)), tf.int32)
        high = tf.cast(tf.round(tf.clip_by_value(centre + side / 2, 0.0, 1.0) * tf.cast(size, tf.float32)), tf.int32)
        positions = tf.range(size)[None, :]
        return (positions >= low[:, None]) & (positions < high[:, None])

    rows, cols = inside(centre[:, 0], height), inside(centre[:, 1], width)
    patch = rows[:, :, None] & cols[:, None, :] & chosen[:, None, None]  # (n, H, W)
    mixed = tf.where(patch[..., None], tf.roll(images, -1, axis=0), images)
    taken = tf.reduce_mean(tf.cast(patch, tf.float32), axis=[1, 2])[:, None]
    return mixed, labels * (1.0 - taken) + tf.roll(labels, -1, axis=0) * taken


def register():
    """Make RoundedBinaryAccuracy known to Keras, so that a last.keras compiled with it loads (train --resume)."""
    return _metric_class()


def rounded_binary_accuracy(name="accuracy"):
    """Binary accuracy against labels rounded to 0 or 1: the class most of a mixed image shows."""
    return _metric_class()(name=name)


@functools.cache  # defined on first use: importing train.mixing does not import Keras
def _metric_class():
    import keras

    @keras.saving.register_keras_serializable(package="kibble", name="RoundedBinaryAccuracy")
    class RoundedBinaryAccuracy(keras.metrics.BinaryAccuracy):
        """Keras's binary accuracy counts a soft label (0.3) as matching no prediction; this rounds it first."""

        def update_state(self, y_true, y_pred, sample_weight=None):
            return super().update_state(keras.ops.round(y_true), y_pred, sample_weight)

    return RoundedBinaryAccuracy
