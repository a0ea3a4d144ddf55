"""Stream a split of the shards in blocks: small stages chained into a pass.

Each stage takes an iterator first and its options after and yields lazily
(webdataset's model: a source, a shuffle, a batch), so each can be tried on
plain lists. Only `read_blocks` touches files. The two passes that ship:

    train     plan_blocks -> shuffled -> worker_part -> chunks -> read_blocks -> shuffle_windows
    evaluate  plan_blocks -> exact_batches -> read_blocks

shards/iterate.py composes the train pass (one worker's part of one epoch,
optionally resumed after some batches) without TensorFlow.

A Block is a run of consecutive images of one shard: one HDF5 read. Blocks
are planned from the manifest without opening a shard, so shuffling and
grouping them costs nothing; `read_blocks` then reads each group straight
into one new array, opening each shard once per pass.
"""
import os
from dataclasses import dataclass

import numpy as np

from shards.errors import ShardError, UserError
from shards.format import ShardReader

BLOCK = 128  # images per HDF5 read: two chunks of 64


@dataclass(frozen=True)
class Block:
    """Images start..stop of the shard at `path`."""

    path: str
    start: int
    stop: int

    def __len__(self):
        return self.stop - self.start


# Labels are int8 up to 127 classes and int16 beyond (shards/format.py);
# reading every shard's labels into int16 never wraps a class index.
LABEL_DTYPE = np.int16

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


def epoch_rng(seed, epoch):
    """The random generator of one epoch: fixed by (seed, epoch), so a resumed
    run draws the same order it would have drawn without the interruption."""
    return np.random.default_rng([seed, epoch])


def shuffled(items, rng=None):
    """The items in an order drawn from `rng` (as they come without one).

    The permutation is drawn at the call, not at the first item, so the
    draws of a generator shared with `shuffle_windows` come in a fixed order.
    """
    items = list(items)
    if rng is None:
        return iter(items)
    return (items[i] for i in rng.permutation(len(items)))


def worker_part(blocks, worker_index=0, num_workers=1):
    """The blocks of worker `worker_index`'s part of `blocks` (taken in the order given).

    The images of the blocks, end to end, are cut into `num_workers` equal
    runs of total // num_workers images; worker i gets run i, cutting at most
    two blocks. The last total % num_workers images (< num_workers) belong to
    no worker: they are dropped, so that every worker gets the same number of
    images and batches and none runs dry while the others wait for it. The
    blocks come shuffled by (seed, epoch), so the dropped images change from
    epoch to epoch. One worker gets every block, unchanged.
    """
    blocks = list(blocks)
    if num_workers == 1:
        return blocks
    share = sum(len(block) for block in blocks) // num_workers
    low, high = worker_index * share, (worker_index + 1) * share
    part, offset = [], 0
    for block in blocks:
        start, stop = max(low, offset), min(high, offset + len(block))
        if start < stop:
            part.append(Block(block.path, block.start + start - offset, block.start + stop - offset))
        offset += len(block)
    return part


def check_workers(total, worker_index, num_workers, what="split"):
    """UserError unless worker `worker_index` of `num_workers` gets at least one of `total` images."""
    if not (isinstance(num_workers, int) and num_workers >= 1):
        raise UserError(f"the number of workers must be a whole number of at least 1. Received: "
                        f"num_workers={num_workers!r}")
    if not (isinstance(worker_index, int) and 0 <= worker_index < num_workers):
        raise UserError(f"the worker index must be from 0 to {num_workers - 1}. Received: "
                        f"worker_index={worker_index!r}")
    if total < num_workers:
        raise UserError(f"the {what} holds {total} images, fewer than the {num_workers} workers to share it; "
                        "use fewer workers or more images")


def blocks_at(blocks, positions):
    """Blocks reading exactly the images at sorted `positions` of `blocks` laid end to end.

    Consecutive positions within one block become one read.
    """
    ends = np.cumsum([len(block) for block in blocks])
    found = []
    for position in positions:
        i = int(np.searchsorted(ends, position, side="right"))
        block = blocks[i]
        index = block.start + int(position) - (int(ends[i]) - len(block))
        last = found[-1] if found else None
        if last is not None and last.path == block.path and last.stop == index:
            found[-1] = Block(block.path, last.start, index + 1)
        else:
            found.append(Block(block.path, index, index + 1))
    return found


def chunks(items, size):
    """Lists of `size` consecutive items; the last may be shorter."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def exact_batches(blocks, rows):
    """Lists of blocks holding exactly `rows` images each (the last may hold fewer).

    Blocks are cut where a batch ends, so batches run across shard
    boundaries: a model sees at most two batch shapes per pass (TensorFlow
    traces its predict function again for every new shape).
    """
    group, held = [], 0
    for block in blocks:
        start = block.start
        while start < block.stop:
            stop = min(block.stop, start + rows - held)
            group.append(Block(block.path, start, stop))
            held += stop - start
            start = stop
            if held == rows:
                yield group
                group, held = [], 0
    if group:
        yield group


def read_blocks(groups, names=False, spare=0):
    """Yield (images, labels, names) per group of blocks, the group read into one new array.

    images: uint8 (n + spare, H, W, 3), the n images of the group followed by
    `spare` rows left unset for the caller to fill (`shuffle_windows` puts the
    rows it carries over there instead of copying the whole window);
    labels: int16 (n,) class indices (-1 unlabelled; int16 holds any label
    dtype a shard may use); names: list of n str, or None unless `names` is asked
    for (reading them costs a third HDF5 call per block).
    Each shard is opened once for the whole pass and closed when it ends.
    """
    shards = {}
    log = os.environ.get(READ_LOG_ENV)
    try:
        for group in groups:
            if log:
                _log_reads(log, group)
            yield _read_group(shards, group, names, spare)
    finally:
        for shard in shards.values():
            shard.close()


# Test hook: when set, read_blocks appends "path start stop" per block it reads
# to this file, so a test can tell which images a process read.
READ_LOG_ENV = "KIBBLE_READ_LOG"


def _log_reads(log, group):
    with open(log, "a") as f:
        f.writelines(f"{block.path} {block.start} {block.stop}\n" for block in group)


def _read_group(shards, group, with_names, spare):
    rows = sum(len(block) for block in group)
    image_shape = _open(shards, group[0]).images.shape[1:]
    images = np.empty((rows + spare, *image_shape), np.uint8)
    labels = np.empty(rows, LABEL_DTYPE)
    names = [] if with_names else None
    filled = 0
    for block in group:
        stop = filled + len(block)
        _, block_labels, block_names = _open(shards, block).read_labelled(
            block.start, block.stop, images[filled:stop], with_names)
        labels[filled:stop] = block_labels
        if with_names:
            names += block_names
        filled = stop
    return images, labels, names


def _open(shards, block):
    shard = shards.get(block.path)
    if shard is None:
        shard = shards[block.path] = ShardReader(block.path)
    if shard.count < block.stop:
        raise ShardError(block.path, f"holds {shard.count} images, expected at least {block.stop}")
    return shard


def shuffle_windows(windows, batch_size, rng=None, carry=None):
    """Yield (images, labels, order) per window, mixing the images of each window.

    `windows` yields (images, labels, ...) as `read_blocks` does. `order` is a
    permutation of the window's rows drawn from `rng` (as they come without
    one): apply it with images[order], or let TensorFlow do it off the GIL.
    Rows beyond the last whole batch of a window are carried into the next
    one, so every window but the last yields a multiple of `batch_size` rows
    and only the epoch's last batch can be short. The carried rows go into
    the window's spare rows when it has them (read_blocks(spare=batch_size - 1)).
    `carry`: (images, labels) rows carried in from before the first window
    (a pass resumed part-way, shards/iterate.py).
    """
    carry_images, carry_labels = carry if carry is not None else (None, np.empty(0, LABEL_DTYPE))
    for images, labels, *_ in windows:
        own, carried = len(labels), len(carry_labels)
        images, labels = _with_rows(images, own, carry_images), np.concatenate([labels, carry_labels])
        rows = own + carried
        mix = rng.permutation(rows) if rng is not None else np.arange(rows)
        # The permutation counts the carried rows first, as when they were
        # copied in front of the window: the same (seed, epoch) gives the
        # same order as before, so a run resumed across versions keeps it.
        order = np.where(mix < carried, mix + own, mix - carried)
        keep = rows - rows % batch_size
        carry_images, carry_labels = images[order[keep:]], labels[order[keep:]]
        if keep:
            yield images, labels, order[:keep]
    if len(carry_labels):
        yield carry_images, carry_labels, np.arange(len(carry_labels))


def _with_rows(images, own, extra):
    """images[:own] followed by `extra`, in place when `images` has the spare rows."""
    if extra is None or len(extra) == 0:
        return images[:own]
    if len(images) >= own + len(extra):
        images[own:own + len(extra)] = extra
        return images[:own + len(extra)]
    return np.concatenate([images[:own], extra])
