"""One worker's part of one epoch of a split, as NumPy arrays: no TensorFlow here.

`epoch_windows` is the train pass of shards/stream.py: the blocks in an order
seeded by (seed, epoch), this worker's part of them (`stream.worker_part`),
read about `window` images at a time and mixed. train.pipeline hands its
windows to tf.data; `iterate_batches` cuts the same windows into NumPy
batches for any other loader (PyTorch's DataLoader, a JAX loop;
docs/training.md has the recipe).

Every draw of an epoch's random generator depends only on sizes, never on
pixels, so the order of a whole epoch is known before anything is read. A
pass resumed after k batches (`skip_batches`) works out which images the
remaining batches need, reads only those, and yields exactly the batches
the uninterrupted pass would have yielded from batch k on.
"""
import os

import numpy as np

from shards import stream
from shards.stream import check_workers  # noqa: F401 - train.pipeline checks with it

WINDOW = 512  # images mixed together; 18 MB of 94x125 images


def worker_batches(total, batch_size, num_workers=1):
    """Batches each of `num_workers` workers gets per epoch of `total` images (the same for all)."""
    return -(-(total // num_workers) // batch_size)


def epoch_windows(blocks, batch_size, seed=0, epoch=0, shuffle=True, window=WINDOW, worker_index=0,
                  num_workers=1, skip_batches=0):
    """Yield (images, labels, order) windows of one worker's part of one epoch of `blocks`.

    images: uint8 (n, H, W, 3) as read; labels: int16 (n,) class indices;
    order: int64 indices of the rows in the order they are to be used
    (images[order]). Every window but the last uses a multiple of
    `batch_size` rows, so only the part's last batch can be short. Workers
    get disjoint parts of equal size that together hold every image of the
    epoch but the last total % num_workers of its order (stream.worker_part).
    `skip_batches`: start after that many batches of the part, reading none
    of their images.
    """
    if not blocks:
        return
    stream.check_workers(sum(len(block) for block in blocks), worker_index, num_workers)
    # One generator draws the block order, then each window's mix.
    rng = stream.epoch_rng(seed, epoch) if shuffle else None
    per_window = max(1, window // len(blocks[0]))
    part = stream.worker_part(stream.shuffled(blocks, rng), worker_index, num_workers)
    groups, carry = stream.chunks(part, per_window), None
    if skip_batches:
        groups, carry, resumed = _resume(part, list(groups), batch_size, rng, skip_batches * batch_size)
        if resumed is not None:
            yield resumed
    windows = stream.read_blocks(groups, spare=batch_size - 1)
    yield from stream.shuffle_windows(windows, batch_size, rng, carry)


def _resume(part, groups, batch_size, rng, skip):
    """(groups left to read, rows they carry in, the window in progress or None) after `skip` rows.

    Replays stream.shuffle_windows on positions (indices into `part` laid end
    to end) instead of pixels, drawing the same permutations from `rng`.
    """
    carried, offset = np.empty(0, np.int64), 0
    for j, group in enumerate(groups):
        own = sum(len(block) for block in group)
        positions = np.concatenate([np.arange(offset, offset + own), carried])
        offset += own
        rows = len(positions)
        mix = rng.permutation(rows) if rng is not None else np.arange(rows)
        order = np.where(mix < len(carried), mix + own, mix - len(carried))
        keep = rows - rows % batch_size
        if skip < keep:
            window, carry = _read_positions(part, positions[order[skip:]], keep - skip)
            return groups[j + 1:], carry, window
        skip -= keep
        carried = positions[order[keep:]]
    if skip < len(carried):  # the part's short last batch
        window, _ = _read_positions(part, carried[skip:], len(carried) - skip)
        return [], None, window
    return [], None, None


def _read_positions(part, needed, used):
    """((images, labels, order) of the first `used` of `needed`, (images, labels) of the rest).

    Reads each needed image once, in shard order.
    """
    ascending = np.sort(needed)
    [(images, labels, _)] = stream.read_blocks([stream.blocks_at(part, ascending)])
    rows = np.searchsorted(ascending, needed)
    rest = rows[used:]
    carry = (images[rest], labels[rest]) if len(rest) else None
    return (images, labels, rows[:used]), carry


def iterate_batches(data, split="train", batch_size=32, seed=0, epoch=0, *, worker_index=0, num_workers=1,
                    limit=None, shuffle=True, window=WINDOW, skip_batches=0):
    """Yield (images, labels) NumPy batches of worker `worker_index`'s part of one epoch.

    data: a shard folder or a loaded manifest; images: uint8 (B, H, W, 3),
    RGB 0-255 as stored; labels: int64 class indices (B,). The batches are
    those train.pipeline.make_dataset feeds Keras for the same arguments
    (seed, epoch, worker), in the same order; every worker gets
    worker_batches(...) of them. Imports no TensorFlow.
    """
    from shards.manifest import load_manifest

    manifest = load_manifest(os.fspath(data)) if isinstance(data, (str, os.PathLike)) else data
    blocks = stream.plan_blocks(manifest, split, limit)
    for images, labels, order in epoch_windows(blocks, batch_size, seed, epoch, shuffle, window, worker_index,
                                               num_workers, skip_batches):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            yield images[rows], labels[rows].astype(np.int64)
