"""The models, by name: the tutorial's four and our default.

Every model takes uint8 images (N, H, W, 3) as they come from the shards.
With two classes it outputs the probability of class index 1 ("cat" for
Dogs vs. Cats) as (N, 1) through one sigmoid unit, as the tutorial did; with
more than two, the probability of each class (N, num_classes) through a
softmax. Rescaling to
[0, 1] is the first layer, so a saved model can be fed shard or `load_image`
pixels directly.

Learning rates (Adam), chosen as follows:
- mlp 1e-5: the tutorial's own value; larger rates make the 10-million-weight
  first layer saturate the sigmoid within an epoch.
- conv1, conv2, conv2-wide 1e-4: the tutorial used "a much smaller" rate than
  the MLP's and recorded slow, shallow progress; with MSE on a sigmoid, 1e-4
  is the largest rate at which these plain nets still trained stably in our
  short trials, and it lets them improve on the tutorial's figures in the
  tutorial's own epoch counts.
- kibble 1.4e-3 with cosine decay and warm-up: batch normalisation makes the
  residual net tolerant of a large rate. It trained at 2e-3 in batches of 32
  until 2026-11-26; batches of 16 (its recipe since) hold about 240 MB less
  in `train --full` for the same time per image and the same accuracy
  (docs/results.md), and its rate is 2e-3 scaled by the square root of the
  batch ratio.

A batch size given without a learning rate keeps the recipe's rate.
"""
import functools
from collections import namedtuple

TUTORIAL_MODELS = ("mlp", "conv1", "conv2", "conv2-wide")
DEFAULT_MODEL = "kibble"
MODELS = TUTORIAL_MODELS + (DEFAULT_MODEL,)
# Each model's recipe: what `train` uses for a setting not given (train.run.TrainSettings.resolved). Weight decay
# is AdamW's, decoupled and multiplied by the learning rate at each step (Keras's): the tutorial's models train with
# plain Adam (0). Precision (train.precision): "auto" trains the default model in bfloat16 where the CPU computes it
# natively (its accuracy was checked there, docs/results.md), float32 elsewhere; the tutorial's models keep float32,
# as they were measured. `small_first` and `average` (the default model's smaller images first and moving average
# of the weights, since 2026-11-27): the tutorial's models take neither. `bn_images` (train.statistics, since
# 2026-11-27): training images the default model's batch normalisation statistics are recomputed on before each
# validation; the tutorial's models have no batch normalisation. `upscale` (upscale_layer, since 2026-11-28): the
# factor per side the default model enlarges its input by first (94x125 shards become 128x170 inside it); the
# tutorial's models keep the tutorial's layers.
Recipe = namedtuple("Recipe", "lr loss epochs batch_size weight_decay precision small_first average bn_images upscale")
RECIPES = {
    "mlp": Recipe(1e-5, "mse", 10, 32, 0.0, "float32", 0.0, 0.0, 0, 1.0),
    "conv1": Recipe(1e-4, "mse", 5, 32, 0.0, "float32", 0.0, 0.0, 0, 1.0),
    "conv2": Recipe(1e-4, "mse", 15, 32, 0.0, "float32", 0.0, 0.0, 0, 1.0),
    "conv2-wide": Recipe(1e-4, "mse", 15, 32, 0.0, "float32", 0.0, 0.0, 0, 1.0),
    "kibble": Recipe(1.4e-3, "bce", 24, 16, 1e-4, "auto", 0.5, 0.999, 1000, 1.36),
}
# Models whose training step is taken in two halves of the batch (train.split_step): conv2-wide's activations
# (128 channels at full resolution) are most of its memory. Not those whose weights are (mlp, conv1: the first
# half's weight gradients would wait beside the second's), nor the default model (batch normalisation).
SPLIT_STEP = ("conv2-wide",)
# Models whose largest dense kernel Adam steps in blocks of rows when train.tf_env.ProcessSettings.dense_chunks is
# on (train.dense_chunks; off by default): conv1's 52 M weights, whose gradient alone is 207 MB beside the weights
# and Adam's slots. The mlp's 9 M weights (36 MB) do not need it.
DENSE_CHUNKS = ("conv1",)
# Models `train` runs with TensorFlow's oneDNN kernels and takes the CPU tensors of from TensorFlow's pool
# (train.tf_env: import_tensorflow, choose_tensor_pool): 20-50% less time per step, but both pools grow in regions
# that double (oneDNN's allocator pools large tensors too), and conv1's and conv2-wide's 100-200 MB tensors took
# their peaks 190-620 MB higher, conv1's past 2 GB (docs/benchmarks.md). Those two keep Eigen and malloc.
TENSOR_POOL = ("mlp", "conv2", "kibble")


def _inputs(keras, shape):
    inputs = keras.Input(shape=shape, dtype="uint8", name="image")
    return inputs, keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)


# `train --upscale`: the largest factor the default model's input may be enlarged by (its cost grows as its square).
MAX_UPSCALE = 4.0


def scaled_size(size, factor, least=1):
    """The sides of `size` scaled by `factor`, each rounded half to even (as tf.round) and at least `least`: the
    upscale layer's output, and (train.pipeline.smaller_size) the smaller images of --small-first."""
    return tuple(max(least, round(side * factor)) for side in size)


@functools.cache  # defined on first use: importing train.models does not import Keras
def upscale_layer():
    """The Keras layer class kibble>Upscale (registered for loading): images enlarged by `factor` per side, bilinear.

    `train --upscale` puts it first in the default model, after the rescale
    and before the augmentation, so every layer after it works on maps
    `factor` times larger per side than the images it is given, whatever
    their size: training's (smaller ones with --small-first), the
    statistics refresh's, validation's, and those of evaluate, predict and
    check-outside, which need to know nothing of it. A model file holding
    it loads once this has run (`register`).
    """
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="kibble", name="Upscale")
    class Upscale(keras.layers.Layer):
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = float(factor)

        def call(self, images):
            # In float64, as Python's floats in scaled_size: float32 would round 95 x 1.3 to 123, not 124.
            size = tf.cast(tf.round(tf.cast(tf.shape(images)[1:3], tf.float64) * self.factor), tf.int32)
            enlarged = tf.image.resize(tf.cast(images, tf.float32), tf.maximum(size, 1), method="bilinear")
            return tf.cast(enlarged, self.compute_dtype)

        def compute_output_shape(self, input_shape):
            height, width = (None if side is None else scaled_size((side,), self.factor)[0]
                             for side in input_shape[1:3])
            return (input_shape[0], height, width, *input_shape[3:])

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    return Upscale


@functools.cache
def augment_layer():
    """The Keras layer class kibble>Augment (registered for loading): a random flip, shift, zoom and rotation of
    each image in training, made in one resampling; in inference the images pass through.

    Keras's RandomFlip, RandomTranslation, RandomZoom and RandomRotation, one
    after the other, resample every image three times (and flip it once):
    82-98 ms of a batch of 32 at 128x170 on the AMX Xeon, against 28 ms for
    one resampling by the product of the four maps (docs/benchmarks.md). The
    draws are theirs, per image: a mirror with probability 1/2, a shift of
    up to `shift` of each side, a zoom factor 1 + a draw from `zoom` (above
    1 shows more of the image; `zoom_width` draws the width's separately,
    else the aspect is kept), a turn of up to `rotation` of a full circle
    about the centre, and the edges filled by reflection, as theirs are.
    """
    import math

    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="kibble", name="Augment")
    class Augment(keras.layers.Layer):
        def __init__(self, shift=0.1, zoom=(-0.15, 0.15), zoom_width=None, rotation=0.04, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.shift, self.rotation, self.seed = float(shift), float(rotation), seed
            self.zoom = tuple(float(v) for v in zoom)
            self.zoom_width = None if zoom_width is None else tuple(float(v) for v in zoom_width)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def _draw(self, count, low, high):
            return keras.random.uniform((count,), minval=low, maxval=high, seed=self.seed_generator)

        def call(self, images, training=None):
            if not training:
                return images
            shape = tf.shape(images)
            count = shape[0]
            height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
            mirror = tf.where(self._draw(count, 0.0, 1.0) < 0.5, -1.0, 1.0)
            shift_x = self._draw(count, -self.shift, self.shift) * width
            shift_y = self._draw(count, -self.shift, self.shift) * height
            zoom_y = 1.0 + self._draw(count, *self.zoom)
            zoom_x = zoom_y if self.zoom_width is None else 1.0 + self._draw(count, *self.zoom_width)
            angle = self._draw(count, -self.rotation, self.rotation) * (2 * math.pi)
            cos, sin = tf.cos(angle), tf.sin(angle)
            # Output pixel p samples the image at c + F Z R (p - c) - F t: R the turn, Z the zoom, t the shift,
            # F the mirror, c the centre; ImageProjectiveTransformV3 takes that map's rows (a0 a1 a2, b0 b1 b2).
            a0, a1 = mirror * zoom_x * cos, -mirror * zoom_x * sin
            b0, b1 = zoom_y * sin, zoom_y * cos
            cx, cy = (width - 1) / 2, (height - 1) / 2
            a2 = cx - mirror * shift_x - a0 * cx - a1 * cy
            b2 = cy - shift_y - b0 * cx - b1 * cy
            zeros = tf.zeros_like(a0)
            transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
            return tf.raw_ops.ImageProjectiveTransformV3(
                images=images, transforms=transforms, output_shape=shape[1:3], fill_value=tf.constant(0.0),
                interpolation="BILINEAR", fill_mode="REFLECT")

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "shift": self.shift, "zoom": self.zoom, "zoom_width": self.zoom_width,
                    "rotation": self.rotation, "seed": self.seed}

    return Augment


def register():
    """Make kibble's own layers known to Keras's loader: call before loading a model file that may hold them."""
    upscale_layer()
    augment_layer()


def _head(keras, x, num_classes):
    """The output layer: one sigmoid unit for two classes (the tutorial's), else a softmax over the classes.

    Always float32, whatever the global dtype policy: under mixed bfloat16 a
    sigmoid's 8-bit mantissa would round probabilities near 0 and 1 and the
    loss with them (train.precision).
    """
    if num_classes <= 2:
        return keras.layers.Dense(1, activation="sigmoid", name="cat", dtype="float32")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="classes", dtype="float32")(x)


def _mlp(keras, shape, num_classes):
    inputs, x = _inputs(keras, shape)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, _head(keras, x, num_classes), name="mlp")


def _plain_conv(keras, shape, filters, name, num_classes):
    """Conv(3x3)+ReLU+2x2 max-pool per entry of `filters`, then two dense layers."""
    inputs, x = _inputs(keras, shape)
    for f in filters:
        x = keras.layers.Conv2D(f, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    # conv1's flattened map is 46x61x24: 768 units make the "200+ MB" model.
    x = keras.layers.Dense(768 if len(filters) == 1 else 128, activation="relu")(x)
    return keras.Model(inputs, _head(keras, x, num_classes), name=name)


# The default model's training augmentation (`train --augment`): "standard" flips, shifts, zooms (same
# aspect) and slightly rotates; "photo" adds what photos from elsewhere vary in (see _photo_augment).
AUGMENTS = ("standard", "photo")
DEFAULT_AUGMENT = "standard"


def _augment(keras, x, seed, augment=DEFAULT_AUGMENT):
    """The augmentation layers on the rescaled images; they run in training only (identity in predict)."""
    if augment == "photo":
        return _photo_augment(keras, x, seed)
    return augment_layer()(shift=0.1, zoom=(-0.15, 0.15), rotation=0.04, seed=seed, name="augment")(x)


def _photo_augment(keras, x, seed):
    """Geometry and colour as photos from other cameras and framings vary.

    Keras 3.15 has no RandomResizedCrop: a zoom drawn separately for height
    and width (each side 70% to 110% of the image) is the crop's scale and
    aspect, the shift places it, with the mirror and the turn in the same
    resampling (augment_layer). Then Keras's layers for brightness (+-0.2 of the range),
    contrast (x0.75 to x1.25), saturation (x0.67 to x1.5) and hue (+-0.02 of
    the circle). Each layer gets its own seed: one seed for all would draw
    the same numbers in each (brightness up always with contrast up).
    """
    L = keras.layers
    x = augment_layer()(shift=0.1, zoom=(-0.3, 0.1), zoom_width=(-0.3, 0.1), rotation=0.04, seed=seed + 1,
                        name="augment")(x)
    x = L.RandomBrightness(0.2, value_range=(0, 1), seed=seed + 4)(x)
    x = L.RandomContrast(0.25, value_range=(0, 1), seed=seed + 5)(x)
    x = L.RandomSaturation((0.4, 0.6), value_range=(0, 1), seed=seed + 6)(x)
    return L.RandomHue(0.04, value_range=(0, 1), seed=seed + 7)(x)


def _kibble(keras, shape, num_classes, seed=0, widths=(64, 128, 256, 384), augment=DEFAULT_AUGMENT,
            stem_stride=2, pool=True, upscale=1.0):
    """Residual separable-conv net for a laptop CPU.

    Stem: two plain 3x3 convs (stride 2 first). Then per width a residual
    stage of two separable convs + BN + ReLU, downsampled by max-pooling, with
    a strided 1x1 conv on the shortcut. Global average pooling, dropout and
    the output layer (`_head`). Random flips, shifts, zooms and small rotations
    (and with `augment` "photo" crops of other aspects and colour changes) run
    inside the model during training only.

    Two knobs that `bench_model.py --variants` times against the default (which
    keeps both as they are): `stem_stride` 4 strides the stem's second conv
    too, so the first stage runs at a quarter of the positions; `pool` False
    downsamples each stage by its second separable conv's stride instead of a
    3x3 max-pool (whose backward pass is 13% of the default step).
    `upscale` above 1 enlarges the images by that factor per side first
    (upscale_layer): larger maps at every stage for the same input.
    """
    L = keras.layers
    inputs, x = _inputs(keras, shape)
    if upscale != 1:
        x = upscale_layer()(upscale, name="upscale")(x)
    x = _augment(keras, x, seed, augment)
    x = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.Activation("relu")(x)
    x = L.Conv2D(48, 3, strides=stem_stride // 2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.Activation("relu")(x)
    for width in widths:
        shortcut = L.Conv2D(width, 1, strides=2, padding="same", use_bias=False)(x)
        shortcut = L.BatchNormalization(momentum=0.9)(shortcut)
        for i in range(2):
            x = L.Activation("relu")(x)
            strides = 2 if (i == 1 and not pool) else 1
            x = L.SeparableConv2D(width, 3, strides=strides, padding="same", use_bias=False)(x)
            x = L.BatchNormalization(momentum=0.9)(x)
        if pool:
            x = L.MaxPooling2D(3, strides=2, padding="same")(x)
        x = L.Add()([x, shortcut])
    x = L.SeparableConv2D(512, 3, padding="same", use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.Activation("relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(0.3)(x)
    return keras.Model(inputs, _head(keras, x, num_classes), name="kibble")


def build_model(name, image_shape, seed=0, num_classes=2, augment=DEFAULT_AUGMENT, any_size=False, upscale=1.0):
    """An uncompiled Keras model by name, for images of `image_shape` (H, W, 3) and `num_classes` classes.

    `augment` (one of AUGMENTS) chooses the default model's training augmentation; the tutorial's
    models have none, so they take only "standard". `any_size`: the default model's input takes
    images of any height and width (`train --small-first` trains it on smaller ones first); the
    tutorial's models flatten a fixed-size map and cannot. `upscale`: the default model enlarges its
    input by this factor per side (1 to MAX_UPSCALE) before anything else; the tutorial's take only 1.
    """
    import keras

    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}. Received: model={name!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2. Received: num_classes={num_classes!r}")
    if augment not in AUGMENTS or (augment != DEFAULT_AUGMENT and name != DEFAULT_MODEL):
        raise ValueError(f"augment must be one of {AUGMENTS} ({DEFAULT_AUGMENT} only for the tutorial's models, "
                         f"which have no augmentation). Received: augment={augment!r} with model={name!r}")
    if any_size and name != DEFAULT_MODEL:
        raise ValueError(f"only {DEFAULT_MODEL} takes images of any size. Received: model={name!r}")
    if not 1 <= upscale <= MAX_UPSCALE or (upscale != 1 and name != DEFAULT_MODEL):
        raise ValueError(f"upscale must be from 1 to {MAX_UPSCALE:g}, and 1 for the tutorial's models. "
                         f"Received: upscale={upscale!r} with model={name!r}")
    if name == "mlp":
        return _mlp(keras, image_shape, num_classes)
    if name == "conv1":
        return _plain_conv(keras, image_shape, (24,), name, num_classes)
    if name == "conv2":
        return _plain_conv(keras, image_shape, (48, 48), name, num_classes)
    if name == "conv2-wide":
        return _plain_conv(keras, image_shape, (128, 128), name, num_classes)
    return _kibble(keras, (None, None, image_shape[-1]) if any_size else image_shape, num_classes, seed,
                   augment=augment, upscale=upscale)
