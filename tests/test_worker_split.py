"""Worker-split input (issue 12 item 4) and passes resumed part-way (item 6), on numbered shards.

Every image's pixels hold its position in the split, so a batch tells which
images it carries. Properties are checked over several (images, batch,
workers) combinations: disjoint parts, exact cover but for the dropped
remainder, equal batch counts, determinism, a new split each epoch.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from shards import iterate, stream
from shards.errors import UserError
from shards.manifest import load_manifest
from shards.format import write_shard
from shards.stream import Block
from tests.conftest import ROOT, make_kaggle_shards

# (images, batch size, workers)
COMBOS = [(60, 8, 2), (61, 4, 3), (100, 7, 4), (23, 5, 5), (37, 32, 2), (50, 3, 1), (130, 8, 3), (90, 4, 2)]
SHARD = 21  # images per shard: blocks of 8 are short at each shard's end


def _numbered(folder, count):
    """Blocks of 8 over shards of 1x2 images whose pixels spell the image's position."""
    blocks = []
    for k, first in enumerate(range(0, count, SHARD)):
        size = min(SHARD, count - first)
        path = os.path.join(folder, f"train-{k:05d}.h5")
        with write_shard(path, height=1, width=2, capacity=size, attrs={"split": "train"},
                         classes=["dog", "cat"]) as writer:
            for i in range(first, first + size):
                writer.append(np.array([[[i // 256] * 3, [i % 256] * 3]], np.uint8), i % 2, f"image-{i}")
        blocks += [Block(path, s, min(s + 8, size)) for s in range(0, size, 8)]
    return blocks


def _batches(blocks, batch, worker=0, workers=1, epoch=0, seed=0, skip=0, window=16):
    """The part's batches as lists of image positions, cut as the datasets cut them."""
    out = []
    for images, labels, order in iterate.epoch_windows(blocks, batch, seed, epoch, window=window,
                                                       worker_index=worker, num_workers=workers,
                                                       skip_batches=skip):
        positions = images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0]
        assert (labels == positions % 2).all()  # labels stay with their images
        out += [positions[order[s:s + batch]].tolist() for s in range(0, len(order), batch)]
    return out


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    cache = {}

    def make(count):
        if count not in cache:
            cache[count] = _numbered(str(tmp_path_factory.mktemp(f"n{count}")), count)
        return cache[count]
    return make


@pytest.mark.parametrize("count,batch,workers", COMBOS)
def test_parts_are_disjoint_cover_the_epoch_and_have_equal_batch_counts(numbered, count, batch, workers):
    blocks = numbered(count)
    parts = [_batches(blocks, batch, w, workers) for w in range(workers)]
    seen = [p for part in parts for b in part for p in b]
    assert len(seen) == len(set(seen)) == count - count % workers  # disjoint; the remainder dropped
    assert set(seen) <= set(range(count))
    assert {len(part) for part in parts} == {iterate.worker_batches(count, batch, workers)}
    for part in parts:  # only a part's last batch may be short
        assert all(len(b) == batch for b in part[:-1]) and 0 < len(part[-1]) <= batch


@pytest.mark.parametrize("count,batch,workers", COMBOS)
def test_the_split_is_fixed_by_seed_and_epoch_and_changes_with_the_epoch(numbered, count, batch, workers):
    blocks = numbered(count)
    first = [_batches(blocks, batch, w, workers, epoch=0) for w in range(workers)]
    assert first == [_batches(blocks, batch, w, workers, epoch=0) for w in range(workers)]
    second = [_batches(blocks, batch, w, workers, epoch=1) for w in range(workers)]
    other_seed = [_batches(blocks, batch, w, workers, seed=9) for w in range(workers)]
    assert first != second and first != other_seed
    if workers > 1:  # each worker gets other images, not just another order
        assert any(sorted(sum(a, [])) != sorted(sum(b, [])) for a, b in zip(first, second))


def test_one_worker_is_the_unsplit_epoch(numbered):
    blocks = numbered(61)
    assert _batches(blocks, 4) == _batches(blocks, 4, 0, 1)
    assert sorted(sum(_batches(blocks, 4), [])) == list(range(61))


@pytest.mark.parametrize("count,batch,workers", COMBOS)
def test_a_resumed_pass_gives_the_remaining_batches_and_reads_only_their_images(numbered, count, batch, workers,
                                                                                tmp_path, monkeypatch):
    blocks = numbered(count)
    worker = workers - 1
    full = _batches(blocks, batch, worker, workers, epoch=2)
    skips = sorted({1, len(full) // 2, len(full) - 1} & set(range(1, len(full))))
    for skip in skips:
        log = tmp_path / f"reads-{skip}"
        monkeypatch.setenv(stream.READ_LOG_ENV, str(log))
        resumed = _batches(blocks, batch, worker, workers, epoch=2, skip=skip)
        monkeypatch.delenv(stream.READ_LOG_ENV)
        assert resumed == full[skip:]
        read = _read_positions(log.read_text(), blocks)
        assert sorted(read) == sorted(sum(full[skip:], []))  # each remaining image once, no done one
    assert len(skips) == min(3, len(full) - 1)


def _read_positions(log, blocks):
    first = {}
    for block in blocks:  # the shards hold consecutive positions
        k = int(os.path.basename(block.path)[6:11])
        first[block.path] = k * SHARD
    return [first[path] + i for line in log.splitlines()
            for path, start, stop in [line.rsplit(" ", 2)] for i in range(int(start), int(stop))]


BAD_WORKERS = [  # (images, worker index, workers, message)
    (10, 0, 0, "at least 1. Received: num_workers=0"),
    (10, 2, 2, "from 0 to 1. Received: worker_index=2"),
    (10, -1, 2, "Received: worker_index=-1"),
    (3, 0, 4, "holds 3 images, fewer than the 4 workers"),
]


@pytest.mark.parametrize("count,worker,workers,message", BAD_WORKERS)
def test_impossible_worker_settings_are_refused_naming_them(count, worker, workers, message):
    with pytest.raises(UserError, match=message):
        stream.check_workers(count, worker, workers)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("split-shards"), cats=15, dogs=16, val=0.1, test=0.1)


def test_keras_dataset_of_a_worker_is_its_numpy_batches(shards_dir):
    from train.pipeline import make_dataset

    manifest = load_manifest(shards_dir)
    for worker in (0, 1):
        dataset = make_dataset(manifest, "train", batch_size=4, seed=2, initial_epoch=1, worker_index=worker,
                               num_workers=2, window=8)
        theirs = [(x.numpy(), y.numpy()[:, 0]) for x, y in dataset]
        ours = list(iterate.iterate_batches(manifest, batch_size=4, seed=2, epoch=1, worker_index=worker,
                                            num_workers=2, window=8))
        assert len(theirs) == len(ours) == dataset.cardinality() == iterate.worker_batches(
            manifest.split_count("train"), 4, 2)
        for (a, b), (c, d) in zip(theirs, ours):
            assert (a == c).all() and (b == d).all()
        resumed = make_dataset(manifest, "train", batch_size=4, seed=2, initial_epoch=1, worker_index=worker,
                               num_workers=2, window=8, skip_batches=2)
        assert [x.numpy().tobytes() for x, _ in resumed] == [a.tobytes() for a, _ in theirs[2:]]
        assert resumed.cardinality() == len(theirs) - 2


def test_numpy_batches_without_tensorflow(shards_dir, tmp_path):
    """iterate_batches on ingested shards, in a process that must not import TensorFlow."""
    code = ("import sys; from shards.iterate import iterate_batches, worker_batches\n"
            "parts = [list(iterate_batches(sys.argv[1], batch_size=4, epoch=3, worker_index=w, num_workers=2))"
            " for w in (0, 1)]\n"
            "assert 'tensorflow' not in sys.modules\n"
            "print([len(p) for p in parts], sum(len(b) for p in parts for b, _ in p), "
            " parts[0][0][0].dtype, parts[0][0][0].shape, parts[0][0][1].dtype)")
    out = subprocess.run([sys.executable, "-c", code, shards_dir], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    share = load_manifest(shards_dir).split_count("train") // 2
    batches = str(-(-share // 4))
    assert out.stdout.split() == [f"[{batches},", f"{batches}]", str(2 * share), "uint8", "(4,",
                                  "8,", "8,", "3)", "int64"]
