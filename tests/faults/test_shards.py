"""Faults of the shards themselves: damaged content, replaced shards, stray files.

Issue 8 items 4 (a shard proves its content without the manifest), 5
(evaluate checks the shards it reads) and 17 (verify lists unknown files).
"""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from evaluate.run import evaluate_run
from ingest import IngestSettings, ingest
from shards import ShardReader, UserError, sha256_file, write_shard
from shards.format import CONTENT_ATTR, ContentChecksum
from tests.conftest import make_kaggle_folder

# 100 train images in one shard, as in the case; val and test one small shard each.
SETTINGS = IngestSettings(size=(16, 20), shard_size=100, val=10, test=10)


def _ingest(src, out):
    return ingest(src, str(out), SETTINGS, scheduler="sync", progress=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-shards")
    src = make_kaggle_folder(str(root / "train"), cats=60, dogs=60)
    _ingest(src, root / "clean")
    return src, str(root / "clean")


@pytest.fixture
def folder(made, tmp_path):
    src, clean = made
    out = str(tmp_path / "shards")
    shutil.copytree(clean, out)
    return src, out


def _pixels(path):
    with ShardReader(path) as shard:
        return shard.read(0, shard.count), shard.labels, shard.names


# --- item 4: a resumed ingest without manifest keeps only shards whose own checksum holds ----------

def _zero_29(h5):
    h5["images"][10:39] = 0


def _flip_label(h5):
    h5["labels"][5] = 1 - h5["labels"][5]


def _rename(h5):
    h5["names"][0] = "train/cat.999999.jpg"


def _drop_checksum(h5):  # a shard from before the checksum existed
    del h5.attrs[CONTENT_ATTR]


def _wrong_cats(h5):
    counts = json.loads(h5.attrs["class_counts"])
    h5.attrs["class_counts"] = json.dumps([counts[0], counts[1] + 1])


def _nothing(h5):
    pass


@pytest.mark.parametrize("damage, rebuilt", [
    (_zero_29, True),         # the case: 29 of 100 images zeroed, metadata intact
    (_flip_label, True),
    (_rename, True),
    (_drop_checksum, True),
    (_wrong_cats, True),
    (_nothing, False),        # a whole shard is kept, byte for byte
])
def test_resume_without_manifest_rebuilds_a_shard_whose_content_fails_its_checksum(folder, damage, rebuilt):
    src, out = folder
    victim = os.path.join(out, "train-00000.h5")
    clean_bytes = open(victim, "rb").read()
    clean = _pixels(victim)
    with h5py.File(victim, "r+", locking=False) as h5:
        damage(h5)
    os.remove(os.path.join(out, "manifest.json"))  # the crash window before the manifest is written

    result = _ingest(src, out)

    assert result["reused_shards"] == result["totals"]["shards"] - int(rebuilt)
    images, labels, names = _pixels(victim)
    assert np.array_equal(images, clean[0]) and np.array_equal(labels, clean[1]) and names == clean[2]
    if not rebuilt:
        assert open(victim, "rb").read() == clean_bytes
    verified = CliRunner().invoke(cli, ["verify", "--data", out])
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.startswith("OK: 3 shards")


def test_checksum_does_not_depend_on_how_rows_were_written(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (150, 4, 5, 3), dtype=np.uint8)
    labels = rng.integers(-1, 2, 150).astype(np.int8)
    names = [f"dir/é{i}.jpg" for i in range(150)]
    with write_shard(str(tmp_path / "s.h5"), height=4, width=5, capacity=200, attrs={"split": "train"},
                     classes=["dog", "cat"]) as w:
        for row in range(150):
            w.append(images[row], int(labels[row]), names[row])
    whole = ContentChecksum()
    whole.update_images(images)
    whole.update_labels(labels)
    whole.update_names(names)
    with ShardReader(tmp_path / "s.h5") as shard:
        assert shard.attrs[CONTENT_ATTR] == whole.value() == shard.content_checksum()
        shard.verify_content()  # raises if not
    moved = ContentChecksum()
    moved.update_names(["dir/é0.jp", "gdir/é1.jpg", *names[2:]])  # same bytes, other boundaries
    assert moved.names != whole.names


# --- item 5: evaluate checks the shards it scores, val (the threshold's source) included ---------

def _run_dir(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": data, "model": "conv1"}))
    return str(run)


def _copy_over(out, source, target, fix_manifest):
    """Copy shard `source` over `target`; with fix_manifest, make the manifest's
    sha256 and bytes agree with the copy, so that only the split attribute tells."""
    shutil.copyfile(os.path.join(out, source), os.path.join(out, target))
    if fix_manifest:
        path = os.path.join(out, "manifest.json")
        data = json.load(open(path))
        entry = next(e for e in data["shards"] if e["file"] == target)
        data["totals"]["bytes"] -= entry["bytes"]
        entry["bytes"] = os.path.getsize(os.path.join(out, target))
        data["totals"]["bytes"] += entry["bytes"]
        entry["sha256"] = sha256_file(os.path.join(out, target))
        json.dump(data, open(path, "w"))


@pytest.mark.parametrize("source, target, splits, verify, message", [
    # a train shard in place of the test shard: caught by its sha256
    ("train-00000.h5", "test-00000.h5", ("test",), True, "test-00000.h5: sha256 differs"),
    # the same with the manifest made to agree and --no-verify: its split attribute still tells
    ("train-00000.h5", "test-00000.h5", ("test",), False,
     "test-00000.h5: is a shard of the 'train' split, the manifest lists it as 'test'"),
    # the val split chooses the threshold: checked even when only test is asked for
    ("test-00000.h5", "val-00000.h5", ("test",), True, "val-00000.h5: sha256 differs"),
])
def test_evaluate_refuses_a_shard_that_is_not_the_one_listed(folder, tmp_path, source, target, splits,
                                                             verify, message):
    _, out = folder
    _copy_over(out, source, target, fix_manifest=not verify)
    with pytest.raises(UserError) as caught:
        evaluate_run(_run_dir(tmp_path, out), splits=splits, progress=False, **({} if verify else {"verify": False}))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not os.path.exists(os.path.join(tmp_path, "run", "metrics.json"))


# --- item 17: verify reports files the manifest does not list ----------------------------------

@pytest.mark.parametrize("planted, code, lines", [
    (["train-00099.h5"], 1, ["UNKNOWN {out}/train-00099.h5: an HDF5 file the manifest does not list; "
                             "no stage reads it"]),
    (["notes.txt"], 0, ["NOTE {out}/notes.txt: not listed in the manifest; no stage reads it",
                        "OK: 3 shards in {out} match the manifest"]),
    (["extra.hdf5", "notes.txt"], 1, ["UNKNOWN {out}/extra.hdf5: an HDF5 file the manifest does not list; "
                                      "no stage reads it",
                                      "NOTE {out}/notes.txt: not listed in the manifest; no stage reads it"]),
    # a writer's lock and a killed writer's temporary file are not data
    ([".lock", ".train-00000.h5.tmp-4242", ".manifest.json.tmp-17"], 0, ["OK: 3 shards in {out} match the manifest"]),
])
def test_verify_reports_files_the_manifest_does_not_list(folder, planted, code, lines):
    _, out = folder
    for name in planted:
        shutil.copyfile(os.path.join(out, "val-00000.h5"), os.path.join(out, name))
    result = CliRunner().invoke(cli, ["verify", "--data", out])
    assert result.exit_code == code
    assert result.stdout.splitlines() == [line.format(out=out) for line in lines]
    if code:
        assert "not in the manifest: move them out of" in result.stderr
