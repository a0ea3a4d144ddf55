"""Faults around near-duplicates: damaged fingerprint datasets, edited near-duplicate manifest entries,
and files the scan cannot fingerprint. Each case is one line of a table."""
import json
import os
import shutil

import h5py
import pytest

from ingest import IngestSettings, ingest
from shards import ShardReader, UserError, load_manifest
from shards.errors import ShardError
from tests.test_near_duplicates import folder_with_copies

SETTINGS = IngestSettings(size=(16, 20), shard_size=8, val=4, test=4)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("near-faults")
    src = folder_with_copies(str(root / "train"))
    ingest(src, str(root / "clean"), SETTINGS, scheduler="sync", progress=False)
    return src, str(root / "clean")


def _set(name, index, value):
    def damage(h5):
        h5[name][index] = value
    return damage


def _delete(name):
    def damage(h5):
        del h5[name]
    return damage


SHARD_DAMAGE = [
    ("a fingerprint changed", _set("fingerprints", 0, 12345), "fingerprints or orig_sizes differ"),
    ("an original size changed", _set("orig_sizes", 1, [1, 1]), "fingerprints or orig_sizes differ"),
    ("fingerprints removed", _delete("fingerprints"), "fingerprints or orig_sizes cannot be read"),
]


@pytest.mark.parametrize("what,damage,message", SHARD_DAMAGE, ids=[c[0] for c in SHARD_DAMAGE])
def test_damaged_fingerprints_fail_the_shards_own_check(made, tmp_path, what, damage, message):
    path = str(tmp_path / "train-00000.h5")
    shutil.copyfile(os.path.join(made[1], "train-00000.h5"), path)
    with h5py.File(path, "r+") as h5:
        damage(h5)
    with ShardReader(path) as shard, pytest.raises(ShardError, match=message):
        shard.verify_content()


def _edit(change):
    def apply(data):
        change(data)
        return data
    return apply


MANIFEST_EDITS = [
    ("member without name", lambda d: d["near_duplicates"][0]["members"][0].pop("name"),
     r"near_duplicates\[0\]\.members\[0\]\.name is missing"),
    ("group of one", lambda d: d["near_duplicates"][0].__setitem__("members", d["near_duplicates"][0]["members"][:1]),
     r"near_duplicates\[0\]\.members must list 2 or more"),
    ("label a number", lambda d: d["near_duplicates"][1]["members"][0].__setitem__("label", 3),
     r"members\[0\]\.label must be a string or null"),
    ("crosses_splits a string", lambda d: d["near_duplicates"][0].__setitem__("crosses_splits", "no"),
     r"crosses_splits must be true or false"),
    ("a group removed", lambda d: d["near_duplicates"].pop(), r"totals\.near_duplicate_groups is 2 but"),
    ("conflicts list removed", lambda d: d.pop("near_duplicate_conflicts"), r"near_duplicate_conflicts is missing"),
]


@pytest.mark.parametrize("what,change,message", MANIFEST_EDITS, ids=[c[0] for c in MANIFEST_EDITS])
def test_edited_near_duplicate_entries_are_one_line_errors(made, tmp_path, what, change, message):
    out = str(tmp_path / "shards")
    shutil.copytree(made[1], out)
    path = os.path.join(out, "manifest.json")
    with open(path) as f:
        data = json.load(f)
    with open(path, "w") as f:
        json.dump(_edit(change)(data), f)
    with pytest.raises(UserError, match=message) as caught:
        load_manifest(out)
    assert "\n" not in str(caught.value)


def test_a_manifest_from_before_near_duplicates_still_loads(made, tmp_path):
    out = str(tmp_path / "shards")
    shutil.copytree(made[1], out)
    path = os.path.join(out, "manifest.json")
    with open(path) as f:
        data = json.load(f)
    for key in ("near_duplicates", "near_duplicate_conflicts", "fingerprint", "original_sizes"):
        del data[key]
    for key in list(data["totals"]):
        if key.startswith("near_duplicate"):
            del data["totals"][key]
    with open(path, "w") as f:
        json.dump(data, f)
    assert load_manifest(out).data["totals"]["images"] == 29


def _truncated(src):
    with open(os.path.join(src, "cat.0.jpg"), "rb") as f:
        data = f.read()
    with open(os.path.join(src, "cat.900.jpg"), "wb") as f:
        f.write(data[:300])


def _fifo(src):
    os.mkfifo(os.path.join(src, "cat.901.jpg"))


BAD_FILES = [
    ("truncated JPEG", _truncated, "cat.900.jpg", "corrupt image"),
    ("a FIFO", _fifo, "cat.901.jpg", "not a regular file (a FIFO)"),
]


@pytest.mark.parametrize("what,make,name,reason", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_file_the_scan_cannot_fingerprint_is_skipped_with_its_reason(tmp_path, what, make, name, reason):
    src = folder_with_copies(str(tmp_path / "train"), cats=6, dogs=6, copies=())
    make(src)
    result = ingest(src, str(tmp_path / "out"), IngestSettings(size=(16, 20), val=2, test=2), scheduler="sync",
                    progress=False)
    [entry] = [s for s in result["skipped"] if s["name"] == name]
    assert reason in entry["reason"] and result["totals"]["images"] == 12
