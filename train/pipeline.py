"""Feed a split of the shards to Keras: a tf.data.Dataset of (images, labels) batches.

The source is a plain Python generator (`iter_windows`) that reads whole
blocks of consecutive images per HDF5 call and mixes about `window` images
at a time. TensorFlow receives whole windows (one Python call per ~500
images) and cuts them into batches in C++. Handing over single batches from
Python instead cost 1-2 ms of GIL-bound work per batch and capped the feed
at about 10,000 img/s here; windows roughly double that (docs/benchmarks.md).

Memory is bounded by about four windows (being read, permuted, prefetched,
being batched) plus `prefetch` batches, whatever the size of the split.
"""
from dataclasses import dataclass

import numpy as np

from shards.errors import ShardError, UserError
from shards.format import ShardReader

BLOCK = 128  # images per HDF5 read: two chunks of 64
WINDOW = 512  # images mixed together; 18 MB of 94x125 images


@dataclass(frozen=True)
class Block:
    path: str
    start: int
    stop: int


def plan_blocks(manifest, split, limit=None, block=BLOCK):
    """Blocks covering the first `limit` images of `split` in shard order.

    The subset is deterministic: the first N images of the (already shuffled)
    split. Raises UserError if the split is missing or smaller than `limit`.
    """
    available = manifest.split_count(split)
    if available == 0:
        raise UserError(f"the shards in {manifest.folder} hold no '{split}' split; run `ingest` with "
                        f"a non-zero {'--val' if split == 'val' else '--test' if split == 'test' else 'share'}")
    if limit is None:
        limit = available
    if limit > available:
        raise UserError(f"asked for {limit} {split} images but {manifest.folder} holds {available}; "
                        f"choose at most {available} (or ingest more data)")
    blocks, remaining = [], limit
    for entry in manifest.shards(split):
        take = min(entry["count"], remaining)
        path = manifest.shard_path(entry)
        blocks += [Block(path, s, min(s + block, take)) for s in range(0, take, block)]
        remaining -= take
        if remaining == 0:
            break
    return blocks


class _OpenShards:
    """Shards opened once per epoch rather than once per block."""

    def __init__(self):
        self.readers = {}

    def read(self, block, out=None, names=True):
        shard = self.readers.get(block.path)
        if shard is None:
            shard = self.readers[block.path] = ShardReader(block.path)
            if shard.count < block.stop:
                raise ShardError(block.path, f"holds {shard.count} images, expected at least {block.stop}")
        return shard.read_labelled(block.start, block.stop, out, names)

    def close(self):
        for shard in self.readers.values():
            shard.close()
        self.readers.clear()


def _raw_windows(blocks, batch_size, seed=0, epoch=0, shuffle=True, window=WINDOW, with_names=True):
    """Yield (images, labels, names, order) per window: the pixels as read, and
    the permutation (without the carried-over rest) that iter_windows applies.
    Without `with_names`, names are not read and come back as Nones."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(blocks)) if shuffle else np.arange(len(blocks))
    if not blocks:
        return
    per_window = max(1, window // max(1, blocks[0].stop - blocks[0].start))
    with ShardReader(blocks[0].path) as shard:
        image_shape = shard.images.shape[1:]
    shards = _OpenShards()
    carry_images, carry_labels, carry_names = None, np.empty(0, np.float32), []
    try:
        for first in range(0, len(order), per_window):
            chosen = [blocks[i] for i in order[first:first + per_window]]
            rows = len(carry_labels) + sum(b.stop - b.start for b in chosen)
            # One buffer per window, filled in place: no concatenation copies.
            images = np.empty((rows, *image_shape), np.uint8)
            labels, names, filled = [carry_labels], list(carry_names), len(carry_labels)
            if filled:
                images[:filled] = carry_images
            for block in chosen:
                size = block.stop - block.start
                _, block_labels, block_names = shards.read(block, images[filled:filled + size], with_names)
                labels.append(block_labels.astype(np.float32))
                names += block_names if with_names else [None] * size
                filled += size
            labels = np.concatenate(labels)
            mix = rng.permutation(rows) if shuffle else np.arange(rows)
            last = first + per_window >= len(order)
            keep = rows if last else rows - rows % batch_size
            rest = mix[keep:]
            carry_images, carry_labels, carry_names = images[rest], labels[rest], [names[i] for i in rest]
            mix = mix[:keep]
            if len(mix):
                yield images, labels, names, mix
    finally:
        shards.close()


def iter_windows(blocks, batch_size, seed=0, epoch=0, shuffle=True, window=WINDOW):
    """Yield (images, labels, names) windows covering `blocks` once, in epoch order.

    images: uint8 (n, H, W, 3); labels: float32 (n, 1); names: list of str.
    With `shuffle`, blocks come in an order seeded by (seed, epoch) and the
    images of about `window` images' worth of blocks are permuted together.
    Every window but the last holds a multiple of `batch_size` images (the
    rest is carried into the next window), so only an epoch's last batch can
    be short.
    """
    for images, labels, names, mix in _raw_windows(blocks, batch_size, seed, epoch, shuffle, window):
        yield images[mix], labels[mix, None], [names[i] for i in mix]


def iter_batches(blocks, batch_size, seed=0, epoch=0, shuffle=True, window=WINDOW):
    """Yield (images, labels, names) batches of one epoch; see iter_windows."""
    for images, labels, names in iter_windows(blocks, batch_size, seed, epoch, shuffle, window):
        for start in range(0, len(labels), batch_size):
            stop = start + batch_size
            yield images[start:stop], labels[start:stop], names[start:stop]


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
        for images, labels, _, order in _raw_windows(blocks, batch_size, seed, epoch, shuffle, window,
                                                     with_names=False):
            yield images, labels[:, None], order

    def to_batches(images, labels, order):
        # The permutation is applied here, in TensorFlow's threads, not under the GIL.
        mixed = (tf.gather(images, order), tf.gather(labels, order))
        return tf.data.Dataset.from_tensor_slices(mixed).batch(batch_size)

    signature = (tf.TensorSpec((None, height, width, 3), tf.uint8), tf.TensorSpec((None, 1), tf.float32),
                 tf.TensorSpec((None,), tf.int64))
    # Python hands over whole windows (one call per ~1,000 images); slicing
    # them into batches happens in TensorFlow's C++ threads, off the GIL.
    dataset = tf.data.Dataset.from_generator(generator, output_signature=signature)
    dataset = dataset.prefetch(1).flat_map(to_batches)
    count = sum(b.stop - b.start for b in blocks)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))
    return dataset.prefetch(prefetch)
