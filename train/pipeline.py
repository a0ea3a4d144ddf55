"""Feed a split of the shards to Keras: a tf.data.Dataset of (images, labels) batches.

The source is `epoch_windows` (shards/iterate.py), a chain of shards.stream
stages: the blocks of the split in an order seeded by (seed, epoch), this
worker's part of them, read about `window` images at a time into one array,
the images of each window mixed. TensorFlow receives
whole windows (one Python call per ~500 images), applies the mix and cuts
them into batches in C++. Handing over single batches from Python instead
cost 1-2 ms of GIL-bound work per batch and capped the feed at about 10,000
img/s here; windows roughly double that (docs/benchmarks.md).

Memory is bounded by about four windows (being read, permuted, prefetched,
being batched) plus `prefetch` batches, whatever the size of the split.
"""
import numpy as np

from shards import iterate
from shards.errors import UserError
from shards.iterate import WINDOW, worker_batches  # noqa: F401 - re-exported for train.run
from shards.stream import plan_blocks  # noqa: F401 - train.run checks sizes with it
from train import mixing
from train.models import scaled_size


def label_spec(num_classes, one_hot=False):
    """(dtype, shape after the batch axis) of the labels fed to a model of `num_classes` classes.

    Two classes: float32 (1,), the 0/1 target of the tutorial's single sigmoid
    unit (its MSE needs a float). More: int32 class indices, what sparse
    categorical cross-entropy takes (no one-hot copy of every label), or
    with `one_hot` float32 (num_classes,) rows, what CutMix's mixed labels
    (train.mixing) and label smoothing's categorical loss need.
    """
    if num_classes <= 2:
        return np.float32, (1,)
    return (np.float32, (num_classes,)) if one_hot else (np.int32, ())


def epoch_windows(blocks, batch_size, seed=0, epoch=0, shuffle=True, window=WINDOW, num_classes=2,
                  worker_index=0, num_workers=1, skip_batches=0, one_hot=False):
    """Yield (images, labels, order) windows of one worker's part of one epoch, in epoch order.

    As shards.iterate.epoch_windows, with labels as `label_spec(num_classes, one_hot)`:
    float32 (n, 1) for two classes, int32 (n,) or one-hot float32 (n, num_classes) for more.
    """
    dtype, shape = label_spec(num_classes, one_hot)
    for images, labels, order in iterate.epoch_windows(blocks, batch_size, seed, epoch, shuffle, window,
                                                       worker_index, num_workers, skip_batches):
        if num_classes > 2 and one_hot:
            labels = np.eye(num_classes, dtype=dtype)[labels]  # already float32 (n, num_classes)
        else:
            labels = labels.astype(dtype).reshape(-1, *shape)
        yield images, labels, order


def smaller_size(image_shape, scale):
    """(height, width) of images of `image_shape` scaled by `scale` per side, rounded, at least 8 pixels."""
    return scaled_size(image_shape[:2], scale, least=8)


def image_size_variable(image_shape):
    """A tf.Variable [height, width] that make_dataset(size=...) resizes its batches to; starts at the shards' size."""
    import tensorflow as tf

    return tf.Variable(list(image_shape[:2]), dtype=tf.int32, trainable=False, name="train_image_size")


def make_dataset(manifest, split, batch_size=32, limit=None, seed=0, shuffle=True,
                 initial_epoch=0, prefetch=2, window=WINDOW, worker_index=0, num_workers=1, skip_batches=0,
                 size=None, cutmix=0.0, one_hot=False):
    """A tf.data.Dataset of (images, labels) batches of one split, for model.fit.

    images: uint8, shape (B, H, W, 3), RGB 0-255 (the models rescale them);
    labels: two classes: float32, shape (B, 1), 1.0 = class index 1 (cat for
    Dogs vs. Cats), 0.0 = index 0 (dog); more: int32 class indices, shape (B,).
    Each iteration over the dataset is one epoch; the shuffle of epoch k is
    fixed by (seed, initial_epoch + k), so a resumed run sees the same order
    it would have seen without the interruption.
    With `num_workers` > 1, each iteration is worker `worker_index`'s part of
    the epoch: disjoint from the other workers' parts and the same number
    of batches for all (shards.stream.worker_part; the last
    n % num_workers images of each epoch's order are dropped).
    With `skip_batches` k, every iteration is the rest of epoch
    `initial_epoch` after its first k batches (a run resumed inside an
    epoch), none of whose images is read.
    With `size` (image_size_variable), each batch is resized (area
    averaging, back to uint8) to the size the variable holds when the batch
    is made, and passed as it is when that is the shards' size; the batches'
    height and width are then unknown to the graph (a model taking any size).
    With `cutmix` > 0, about that share of the images get a patch of
    another (train.mixing.cutmix) and soft labels; with more than two
    classes the labels are then one-hot, as they are with `one_hot`.
    """
    import tensorflow as tf

    blocks = plan_blocks(manifest, split, limit)
    count = sum(len(block) for block in blocks)
    iterate.check_workers(count, worker_index, num_workers)
    batches = worker_batches(count, batch_size, num_workers) - skip_batches
    if not 0 <= skip_batches < batches + skip_batches:
        raise UserError(f"cannot skip {skip_batches} of the {batches + skip_batches} batches of an epoch. "
                        f"Received: skip_batches={skip_batches}")
    height, width, _ = manifest.image_shape
    num_classes = manifest.num_classes
    epochs_started = [initial_epoch]
    one_hot = one_hot or cutmix > 0

    def generator():
        epoch = epochs_started[0]
        if not skip_batches:  # resumed: every iteration is the same rest of one epoch
            epochs_started[0] += 1
        for i, (images, labels, order) in enumerate(epoch_windows(
                blocks, batch_size, seed, epoch, shuffle, window, num_classes, worker_index, num_workers,
                skip_batches, one_hot)):
            yield images, labels, order, mixing.window_seed(seed, epoch, skip_batches, i)

    def to_batches(images, labels, order, key):
        # The mix is applied here, in TensorFlow's threads, not under the GIL.
        mixed = (tf.gather(images, order), tf.gather(labels, order))
        if cutmix > 0:
            mixed = mixing.cutmix(*mixed, cutmix, key)
        return tf.data.Dataset.from_tensor_slices(mixed).batch(batch_size)

    dtype, shape = label_spec(num_classes, one_hot)
    signature = (tf.TensorSpec((None, height, width, 3), tf.uint8),
                 tf.TensorSpec((None, *shape), tf.as_dtype(dtype)), tf.TensorSpec((None,), tf.int64),
                 tf.TensorSpec((2,), tf.int64))
    dataset = tf.data.Dataset.from_generator(generator, output_signature=signature)
    dataset = dataset.prefetch(1).flat_map(to_batches)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    if size is not None:
        dataset = dataset.map(lambda images, labels: (_resized(images, size), labels))
    return dataset.prefetch(prefetch)


def _resized(images, size):
    import tensorflow as tf

    wanted = size.read_value()
    same = tf.reduce_all(tf.equal(wanted, tf.shape(images)[1:3]))
    return tf.cond(same, lambda: images, lambda: tf.cast(
        tf.clip_by_value(tf.round(tf.image.resize(images, wanted, method="area")), 0, 255), tf.uint8))
