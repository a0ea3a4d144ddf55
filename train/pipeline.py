"""Feed a split of the shards to Keras: a tf.data.Dataset of (images, labels) batches.

The source is `epoch_windows`, a chain of shards.stream stages: the blocks of
the split in an order seeded by (seed, epoch), read about `window` images at
a time into one array, the images of each window mixed. TensorFlow receives
whole windows (one Python call per ~500 images), applies the mix and cuts
them into batches in C++. Handing over single batches from Python instead
cost 1-2 ms of GIL-bound work per batch and capped the feed at about 10,000
img/s here; windows roughly double that (docs/benchmarks.md).

Memory is bounded by about four windows (being read, permuted, prefetched,
being batched) plus `prefetch` batches, whatever the size of the split.
"""
import numpy as np

from shards import stream
from shards.stream import plan_blocks  # noqa: F401 - train.run checks sizes with it

WINDOW = 512  # images mixed together; 18 MB of 94x125 images


def epoch_windows(blocks, batch_size, seed=0, epoch=0, shuffle=True, window=WINDOW):
    """Yield (images, labels, order) windows covering `blocks` once, in epoch order.

    images: uint8 (n, H, W, 3) as read; labels: float32 (n, 1); order: int64
    indices of the rows in the order they are to be used (images[order]).
    With `shuffle`, the blocks come in an order seeded by (seed, epoch) and
    about `window` images' worth of blocks are mixed together. Every window
    but the last uses a multiple of `batch_size` rows, so only an epoch's
    last batch can be short.
    """
    if not blocks:
        return
    # One generator draws the block order, then each window's mix.
    rng = stream.epoch_rng(seed, epoch) if shuffle else None
    groups = stream.chunks(stream.shuffled(blocks, rng), max(1, window // len(blocks[0])))
    windows = stream.read_blocks(groups, spare=batch_size - 1)
    for images, labels, order in stream.shuffle_windows(windows, batch_size, rng):
        yield images, labels.astype(np.float32)[:, None], order


def make_dataset(manifest, split, batch_size=32, limit=None, seed=0, shuffle=True,
                 initial_epoch=0, prefetch=2, window=WINDOW):
    """A tf.data.Dataset of (images, labels) batches of one split, for model.fit.

    images: uint8, shape (B, H, W, 3), RGB 0-255 (the models rescale them);
    labels: float32, shape (B, 1), 1.0 = cat, 0.0 = dog.
    Each iteration over the dataset is one epoch; the shuffle of epoch k is
    fixed by (seed, initial_epoch + k), so a resumed run sees the same order
    it would have seen without the interruption.
    """
    import tensorflow as tf

    blocks = plan_blocks(manifest, split, limit)
    height, width, _ = manifest.image_shape
    epochs_started = [initial_epoch]

    def generator():
        epoch = epochs_started[0]
        epochs_started[0] += 1
        yield from epoch_windows(blocks, batch_size, seed, epoch, shuffle, window)

    def to_batches(images, labels, order):
        # The mix is applied here, in TensorFlow's threads, not under the GIL.
        mixed = (tf.gather(images, order), tf.gather(labels, order))
        return tf.data.Dataset.from_tensor_slices(mixed).batch(batch_size)

    signature = (tf.TensorSpec((None, height, width, 3), tf.uint8), tf.TensorSpec((None, 1), tf.float32),
                 tf.TensorSpec((None,), tf.int64))
    dataset = tf.data.Dataset.from_generator(generator, output_signature=signature)
    dataset = dataset.prefetch(1).flat_map(to_batches)
    count = sum(len(block) for block in blocks)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))
    return dataset.prefetch(prefetch)
