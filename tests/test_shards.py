import os
import subprocess
import sys

import numpy as np
import pytest

from shards import ShardError, ShardReader, load_manifest, verify_shards, write_shard
from shards.errors import UserError


def _write(path, n=10, attrs=None):
    with write_shard(str(path), height=4, width=5, capacity=n, attrs=attrs or {"split": "train"},
                     classes=["dog", "cat"]) as w:
        for i in range(n):
            w.append(np.full((4, 5, 3), i, np.uint8), i % 2, f"img{i}.jpg")


def test_round_trip_shapes_dtypes_and_attributes(tmp_path):
    _write(tmp_path / "s.h5", n=70)
    with ShardReader(tmp_path / "s.h5") as shard:
        assert shard.count == 70 and shard.class_counts == [35, 35] and shard.classes == ["dog", "cat"]
        block = shard.read(60, 70)
        assert block.dtype == np.uint8 and block.shape == (10, 4, 5, 3)
        assert block[:, 0, 0, 0].tolist() == list(range(60, 70))
        assert shard.names[3] == "img3.jpg" and shard.labels.dtype == np.int8
        assert shard.images.chunks[0] == 64


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with write_shard(str(tmp_path / "s.h5"), height=4, width=5, capacity=3, attrs={}, classes=["a"]) as w:
            w.append(np.zeros((4, 5, 3), np.uint8), 1, "a")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_reader_ignores_a_lock_held_by_another_process(tmp_path):
    """On network drives locking fails; we never depend on it, so a shard
    held open for writing elsewhere (which would make a locking open fail)
    still opens."""
    _write(tmp_path / "s.h5")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r+'); "
                               "print('ready', flush=True); time.sleep(30)", str(tmp_path / "s.h5")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        import h5py
        with pytest.raises(OSError, match="lock"):
            h5py.File(tmp_path / "s.h5", "r")  # HDF5's default: refuses
        with ShardReader(tmp_path / "s.h5") as shard:
            assert shard.count == 10
    finally:
        holder.kill()
        holder.wait()


def test_reader_errors_name_the_shard(tmp_path):
    with pytest.raises(ShardError, match="missing.h5: file not found"):
        ShardReader(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(ShardError, match="junk.h5: cannot be opened"):
        ShardReader(tmp_path / "junk.h5")


def test_verify_catches_one_flipped_byte(kaggle_dir, tmp_path):
    from ingest import IngestSettings, ingest

    ingest(kaggle_dir, str(tmp_path / "out"), IngestSettings(size=(16, 20), shard_size=8),
           scheduler="sync", progress=False)
    manifest = load_manifest(str(tmp_path / "out"))
    assert verify_shards(manifest) == []
    victim = manifest.shard_path(manifest.shards("train")[1])
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) - 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    problems = verify_shards(manifest)
    assert len(problems) == 1 and "train-00001.h5" in str(problems[0]) and "sha256" in str(problems[0])


def test_missing_manifest_says_to_run_ingest(tmp_path):
    with pytest.raises(UserError, match="run `ingest` first"):
        load_manifest(str(tmp_path))
