"""shards.stream's stages and the path training ships: train.pipeline.epoch_windows and make_dataset.

Stages are tried on plain lists where they touch no file; the reader and the
training chain on real shards: tiny hand-written ones whose pixel is the
image's position (so an order can be pinned), and an ingested folder whose
pixels encode each image's label and file number (tests/conftest.py).
"""
import hashlib

import numpy as np
import pytest

from shards import ShardError, ShardReader, UserError, load_manifest, write_shard
from shards import stream
from shards.stream import Block, chunks, exact_batches, plan_blocks, read_blocks, shuffle_windows, shuffled
from tests.conftest import decoded_label, make_kaggle_shards
from train.pipeline import epoch_windows, make_dataset

SIZE = (24, 32)


# --- stages on plain lists ---------------------------------------------------------------------

@pytest.mark.parametrize("items, size, expected", [
    (range(7), 3, [[0, 1, 2], [3, 4, 5], [6]]),
    (range(6), 3, [[0, 1, 2], [3, 4, 5]]),
    (range(2), 5, [[0, 1]]),
    ([], 4, []),
])
def test_chunks(items, size, expected):
    assert list(chunks(items, size)) == expected


def _spans(groups):
    return [[(b.path, b.start, b.stop) for b in group] for group in groups]


@pytest.mark.parametrize("blocks, rows, expected", [
    # cut where a batch ends, across the boundary of shards a and b
    ([Block("a", 0, 4), Block("a", 4, 6), Block("b", 0, 4)], 4,
     [[("a", 0, 4)], [("a", 4, 6), ("b", 0, 2)], [("b", 2, 4)]]),
    # a block larger than a batch is cut into several
    ([Block("a", 0, 10)], 3, [[("a", 0, 3)], [("a", 3, 6)], [("a", 6, 9)], [("a", 9, 10)]]),
    ([Block("a", 0, 2), Block("b", 0, 2)], 8, [[("a", 0, 2), ("b", 0, 2)]]),
])
def test_exact_batches_cut_blocks_so_every_batch_but_the_last_is_full(blocks, rows, expected):
    assert _spans(exact_batches(blocks, rows)) == expected


def test_shuffled_draws_its_order_from_the_generator_at_the_call():
    order = list(shuffled(range(10), stream.epoch_rng(3, 1)))
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert list(shuffled(range(10), stream.epoch_rng(3, 1))) == order
    assert list(shuffled(range(10), stream.epoch_rng(3, 2))) != order
    assert list(shuffled(range(10))) == list(range(10))
    rng = stream.epoch_rng(3, 1)
    lazy = shuffled(range(10), rng)
    rng.random()  # a draw after the call does not change the order already drawn
    assert list(lazy) == order


def _windows(sizes, spare=0):
    """Plain windows: images whose only pixel is their position, labels = position % 2."""
    first = 0
    for size in sizes:
        images = np.zeros((size + spare, 1), np.int64)
        images[:size, 0] = np.arange(first, first + size)
        yield images, np.arange(first, first + size) % 2
        first += size


@pytest.mark.parametrize("sizes, batch_size, shuffle", [
    ([10, 10, 10], 4, True),
    ([10, 10, 10], 4, False),
    ([3, 3], 8, True),       # the whole epoch fits in less than a batch
    ([12, 12, 5], 6, True),  # every window a multiple of the batch: nothing carried
    ([7, 1, 9, 2], 3, True),
])
def test_shuffle_windows_every_row_once_and_only_the_last_batch_short(sizes, batch_size, shuffle):
    rng = stream.epoch_rng(0, 0) if shuffle else None
    out = list(shuffle_windows(_windows(sizes), batch_size, rng))
    used = [images[order, 0] for images, _, order in out]
    order = np.concatenate(used).tolist()
    assert sorted(order) == list(range(sum(sizes)))
    assert (order != list(range(sum(sizes)))) == shuffle
    assert all(len(rows) % batch_size == 0 for rows in used[:-1])
    for images, labels, order in out:  # labels stay with their images
        assert (labels[order] == images[order, 0] % 2).all()


def test_shuffle_windows_carries_rows_into_spare_rows_with_the_same_result():
    copied = list(shuffle_windows(_windows([10, 10, 10]), 4, stream.epoch_rng(5, 0)))
    in_place = list(shuffle_windows(_windows([10, 10, 10], spare=3), 4, stream.epoch_rng(5, 0)))
    assert [images[order, 0].tolist() for images, _, order in copied] == \
           [images[order, 0].tolist() for images, _, order in in_place]


# --- the reader and the training chain on hand-written shards -----------------------------------

SHARD_SIZES = (21, 21, 18)  # uneven, so blocks of 8 are short at each shard's end


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """Blocks of 8 over three shards of 1x1 images whose pixel is the image's position."""
    folder = tmp_path_factory.mktemp("numbered")
    blocks, first = [], 0
    for k, size in enumerate(SHARD_SIZES):
        path = str(folder / f"train-{k:05d}.h5")
        with write_shard(path, height=1, width=1, capacity=size, attrs={"split": "train"},
                         classes=["dog", "cat"]) as writer:
            for i in range(first, first + size):
                writer.append(np.full((1, 1, 3), i, np.uint8), i % 2, f"image-{i}")
        blocks += [Block(path, s, min(s + 8, size)) for s in range(0, size, 8)]
        first += size
    return blocks


def _positions(windows):
    return [images[order, 0, 0, 0].tolist() for images, _, order in windows]


# The orders the previous version (iter_windows) gave for these shards: a run
# resumed across the change of code must see the order it would have seen.
PINNED = [
    ((0, 0, True, 8, 32), [31, 40, 17, 48, 44, 33, 30, 29, 49, 39, 43, 35, 45, 38, 32, 18, 42, 37, 19, 46,
                           41, 47, 16, 36, 26, 59, 56, 58, 3, 27, 23, 52, 50, 28, 5, 4, 1, 21, 0, 22, 20,
                           53, 34, 25, 2, 51, 57, 24, 14, 12, 7, 9, 10, 6, 8, 13, 54, 15, 11, 55]),
    ((3, 1, True, 8, 32), [39, 11, 12, 15, 31, 29, 13, 35, 14, 17, 32, 33, 16, 37, 9, 8, 10, 34, 18, 41, 40,
                           19, 30, 36, 47, 0, 4, 50, 1, 45, 55, 5, 52, 7, 57, 53, 59, 56, 51, 46, 6, 48, 58,
                           43, 54, 42, 3, 38, 2, 25, 24, 20, 26, 22, 44, 49, 27, 28, 21, 23]),
    ((5, 2, True, 5, 16), [6, 7, 59, 3, 5, 58, 2, 4, 1, 0, 30, 34, 40, 37, 33, 29, 32, 36, 31, 35, 22, 39, 25,
                           49, 43, 27, 41, 28, 42, 21, 23, 45, 48, 47, 46, 14, 15, 8, 24, 12, 19, 9, 16, 18,
                           38, 44, 10, 26, 20, 17, 50, 51, 54, 57, 52, 53, 13, 56, 55, 11]),
    ((0, 0, False, 8, 32), list(range(60))),
]


@pytest.mark.parametrize("settings, expected", PINNED)
def test_epoch_order_is_the_one_earlier_versions_gave(numbered, settings, expected):
    seed, epoch, shuffle, batch_size, window = settings
    used = _positions(epoch_windows(numbered, batch_size, seed, epoch, shuffle, window))
    assert sum(used, []) == expected
    assert all(len(rows) % batch_size == 0 for rows in used[:-1])


def test_read_blocks_opens_each_shard_once_per_pass(numbered, monkeypatch):
    opened = []

    class Counting(ShardReader):
        def __init__(self, path):
            opened.append(path)
            super().__init__(path)

    monkeypatch.setattr(stream, "ShardReader", Counting)
    groups = [[block] for block in shuffled(numbered, stream.epoch_rng(0, 0))]
    assert sum(len(labels) for _, labels, _ in read_blocks(groups)) == 60
    assert sorted(opened) == sorted({b.path for b in numbered})


def test_read_blocks_reads_a_group_into_one_array_with_names_when_asked(numbered):
    group = [numbered[2], numbered[3]]  # the end of shard 0 and the start of shard 1
    [(images, labels, names)] = read_blocks([group], names=True, spare=3)
    assert images.shape == (5 + 8 + 3, 1, 1, 3) and images.dtype == np.uint8
    assert images[:13, 0, 0, 0].tolist() == list(range(16, 29))
    assert labels.dtype == np.int16 and labels.tolist() == [i % 2 for i in range(16, 29)]
    assert names == [f"image-{i}" for i in range(16, 29)]
    [(_, _, names)] = read_blocks([group])
    assert names is None


def test_read_blocks_names_a_shard_shorter_than_its_blocks(numbered):
    path = numbered[0].path
    with pytest.raises(ShardError, match=r"train-00000.h5: holds 21 images, expected at least 30"):
        list(read_blocks([[Block(path, 20, 30)]]))


# --- the training chain on ingested shards --------------------------------------------------------

@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("stream-data"), cats=60, dogs=60, size=SIZE,
                              shard_size=16, val=0.2, test=0.2)


def _digests(images):
    return [hashlib.md5(image.tobytes()).hexdigest() for image in images]


def _epoch(blocks, epoch, seed=0, batch_size=8):
    """The batches of one epoch as the dataset cuts them: each window's rows in order, 8 at a time."""
    batches = []
    for images, labels, order in epoch_windows(blocks, batch_size, seed, epoch, window=32):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batches.append((images[rows], labels[rows]))
    return batches, [d for images, _ in batches for d in _digests(images)]


def _stored(manifest, count):
    """Digests of the first `count` images of the train split, read straight from the shards."""
    digests = []
    for entry in manifest.shards("train"):
        with ShardReader(manifest.shard_path(entry)) as shard:
            digests += _digests(shard.read(0, shard.count))
    return digests[:count]


def test_every_image_once_per_epoch_new_order_each_epoch_same_for_same_seed(shards_dir):
    manifest = load_manifest(shards_dir)
    blocks = plan_blocks(manifest, "train", block=8)
    _, first = _epoch(blocks, 0)
    _, second = _epoch(blocks, 1)
    _, again = _epoch(blocks, 0)
    _, other_seed = _epoch(blocks, 0, seed=7)
    # (JPEG makes a few generated images identical, hence multisets, not sets)
    assert sorted(first) == sorted(second) == sorted(_stored(manifest, 72))
    assert manifest.split_count("train") == 72
    assert first != second and first == again and first != other_seed


def test_labels_stay_with_their_images_and_batches_are_full(shards_dir):
    blocks = plan_blocks(load_manifest(shards_dir), "train", block=8)
    batches, _ = _epoch(blocks, 3)
    assert [len(labels) for _, labels in batches] == [8] * 9
    for images, labels in batches:
        assert images.dtype == np.uint8 and images.shape[1:] == (*SIZE, 3)
        assert labels.dtype == np.float32 and labels.shape == (len(images), 1)
        assert [decoded_label(im) for im in images] == labels[:, 0].astype(int).tolist()


def test_subset_is_the_first_n_of_the_split(shards_dir):
    manifest = load_manifest(shards_dir)
    _, digests = _epoch(plan_blocks(manifest, "train", limit=20, block=8), 0)
    assert sorted(digests) == sorted(_stored(manifest, 20)) != sorted(_stored(manifest, 72)[-20:])
    with pytest.raises(UserError, match="holds 72"):
        plan_blocks(manifest, "train", limit=73)


def test_tf_dataset_each_epoch_complete_differently_ordered_and_resumable(shards_dir):
    manifest = load_manifest(shards_dir)
    dataset = make_dataset(manifest, "train", batch_size=8, seed=1, window=32)
    epochs = [[d for images, _ in dataset for d in _digests(images.numpy())] for _ in range(2)]
    assert len(epochs[0]) == 72 and sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]
    # the order TensorFlow applies is the one epoch_windows gives
    blocks = plan_blocks(manifest, "train")
    assert epochs[1] == _epoch(blocks, 1, seed=1)[1]
    # a run resumed at epoch 1 sees what the uninterrupted run saw in its second epoch
    resumed = make_dataset(manifest, "train", batch_size=8, seed=1, window=32, initial_epoch=1)
    assert [d for images, _ in resumed for d in _digests(images.numpy())] == epochs[1]
    images, labels = next(iter(dataset))
    assert images.dtype.name == "uint8" and labels.dtype.name == "float32" and labels.shape == (8, 1)


def test_labels_beyond_int8_come_back_whole(tmp_path):
    """A shard of 300 classes stores int16 labels; the stream must not wrap them."""
    path = str(tmp_path / "train-00000.h5")
    classes = [f"c{i:03d}" for i in range(300)]
    with write_shard(path, height=1, width=1, capacity=3, attrs={"split": "train"}, classes=classes) as writer:
        for label in (5, 200, 299):
            writer.append(np.zeros((1, 1, 3), np.uint8), label, f"image-{label}")
    [(_, labels, _)] = read_blocks([[Block(path, 0, 3)]])
    [(_, shuffled_labels, _)] = shuffle_windows(read_blocks([[Block(path, 0, 3)]]), batch_size=3)
    assert labels.tolist() == [5, 200, 299] and shuffled_labels.tolist() == [5, 200, 299]
