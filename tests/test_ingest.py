import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from ingest import IngestSettings, ingest
from shards import ShardReader, UserError, load_manifest, verify_shards
from tests.conftest import ROOT, decoded_label, make_image, make_kaggle_folder

SMALL = IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2)


def run(src, out, settings=SMALL, **kwargs):
    kwargs.setdefault("scheduler", "sync")
    kwargs.setdefault("progress", False)
    return ingest(str(src), str(out), settings, **kwargs)


def read_all(out):
    """{split: (names, labels, images)} read back from the shards."""
    manifest = load_manifest(str(out))
    result = {}
    for split in manifest.data["splits"]:
        names, labels, images = [], [], []
        for entry in manifest.shards(split):
            with ShardReader(manifest.shard_path(entry)) as shard:
                names += shard.names
                labels.append(shard.labels)
                images.append(shard.read(0, shard.count))
        result[split] = (names, np.concatenate(labels), np.concatenate(images))
    return result


def test_counts_add_up_and_splits_are_stratified_and_disjoint(kaggle_dir, tmp_path):
    result = run(kaggle_dir, tmp_path / "out")
    splits = result["splits"]
    assert {k: (v["class_counts"][1], v["class_counts"][0]) for k, v in splits.items()} == {
        "train": (12, 12), "val": (4, 4), "test": (4, 4)}
    assert result["totals"]["images"] == 40
    data = read_all(tmp_path / "out")
    seen = [name for names, _, _ in data.values() for name in names]
    assert len(seen) == len(set(seen)) == 40
    for names, labels, images in data.values():
        assert images.dtype == np.uint8 and images.shape[1:] == (16, 20, 3)
        # labels stay with their images: the pixels encode the label
        assert [decoded_label(im) for im in images] == labels.tolist()
        assert labels.tolist() == [1 if n.startswith("cat.") else 0 for n in names]
    for entry in load_manifest(str(tmp_path / "out")).shards("train"):
        assert entry["class_counts"][1] > 0 and entry["class_counts"][0] > 0  # every shard mixes classes


def test_same_seed_same_manifest_and_pixels_other_seed_other_order(kaggle_dir, tmp_path):
    first = run(kaggle_dir, tmp_path / "a")
    second = run(kaggle_dir, tmp_path / "b", scheduler="threads")
    run(kaggle_dir, tmp_path / "c", IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2, seed=1))
    assert first["shards"] == second["shards"] and first["plan"] == second["plan"]
    a, b, c = read_all(tmp_path / "a"), read_all(tmp_path / "b"), read_all(tmp_path / "c")
    for split in a:
        assert a[split][0] == b[split][0]
        assert np.array_equal(a[split][2], b[split][2])
    assert a["train"][0] != c["train"][0]


def test_exact_duplicates_are_ingested_once(kaggle_dir, tmp_path):
    shutil.copy(os.path.join(kaggle_dir, "cat.3.jpg"), os.path.join(kaggle_dir, "cat.99.jpg"))
    shutil.copy(os.path.join(kaggle_dir, "dog.4.jpg"), os.path.join(kaggle_dir, "dog.98.jpg"))
    result = run(kaggle_dir, tmp_path / "out")
    assert result["totals"]["images"] == 40 and result["totals"]["duplicates"] == 2
    assert {d["name"]: d["same_as"] for d in result["duplicates"]} == {
        "cat.99.jpg": "cat.3.jpg", "dog.98.jpg": "dog.4.jpg"}


def _bad_files(folder):
    good = open(os.path.join(folder, "cat.0.jpg"), "rb").read()
    with open(os.path.join(folder, "cat.100.jpg"), "wb") as f:
        f.write(good[: len(good) // 2])                      # truncated
    with open(os.path.join(folder, "cat.101.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + os.urandom(3000))     # corrupt JPEG
    open(os.path.join(folder, "dog.100.jpg"), "wb").close()  # zero bytes
    with open(os.path.join(folder, "dog.101.jpg"), "w") as f:
        f.write("this is not a picture")                      # not an image
    make_image(os.path.join(folder, "dog.102.png"), 0, 1, size=(300, 300), fmt="PNG")  # too large
    os.symlink(os.path.join(folder, "gone.jpg"), os.path.join(folder, "cat.102.jpg"))  # unreadable
    return {"cat.100.jpg": "corrupt", "cat.101.jpg": "", "dog.100.jpg": "empty",
            "dog.101.jpg": "not an image", "dog.102.png": "too large", "cat.102.jpg": "unreadable"}


def test_every_kind_of_bad_file_is_skipped_and_reported(kaggle_dir, tmp_path):
    expected = _bad_files(kaggle_dir)
    settings = IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2, max_pixels=50_000)
    result = run(kaggle_dir, tmp_path / "out", settings)
    reasons = {s["name"]: s["reason"] for s in result["skipped"]}
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word in reasons[name], (name, reasons[name])
    assert result["totals"]["skipped"] == 6 and result["totals"]["images"] == 40
    assert json.load(open(tmp_path / "out" / "manifest.json"))["totals"]["skipped"] == 6


def test_strict_turns_a_skip_into_an_error_and_writes_no_manifest(kaggle_dir, tmp_path):
    with open(os.path.join(kaggle_dir, "cat.101.jpg"), "w") as f:
        f.write("not an image")
    with pytest.raises(UserError, match="cat.101.jpg"):
        run(kaggle_dir, tmp_path / "out", strict=True)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_exclude_list_leaves_files_out_and_counts_them(kaggle_dir, tmp_path):
    listing = tmp_path / "exclude.txt"
    listing.write_text("# known bad pictures\ndog.5.jpg\ncat.7.jpg  # a cat\n")
    result = run(kaggle_dir, tmp_path / "out", exclude=str(listing))
    assert [e["name"] for e in result["excluded"]] == ["cat.7.jpg", "dog.5.jpg"] and result["totals"]["images"] == 38
    names = [n for names, _, _ in read_all(tmp_path / "out").values() for n in names]
    assert "dog.5.jpg" not in names and "cat.7.jpg" not in names


def _folder_with(folder, name):
    folder.mkdir()
    (folder / name).write_text("x")
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "input not found"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
    (lambda p: _folder_with(p / "other", "notes.txt"), "no labelled images"),
])
def test_unusable_input_is_an_error_and_writes_nothing(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        run(make(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _stamps(folder):
    """mtime of every file but the lock (which each run takes, writing its pid)."""
    return {p: os.stat(folder / p).st_mtime_ns for p in os.listdir(folder) if p != ".lock"}


def test_rerun_on_complete_output_changes_nothing_unless_forced(kaggle_dir, tmp_path):
    run(kaggle_dir, tmp_path / "out")
    stamps = _stamps(tmp_path / "out")
    again = run(kaggle_dir, tmp_path / "out")
    assert again["unchanged"]
    assert stamps == _stamps(tmp_path / "out")
    forced = run(kaggle_dir, tmp_path / "out", force=True)
    assert not forced["unchanged"] and forced["reused_shards"] == 0


def test_other_settings_on_an_existing_output_are_refused(kaggle_dir, tmp_path):
    run(kaggle_dir, tmp_path / "out")
    with pytest.raises(UserError, match="different ingest"):
        run(kaggle_dir, tmp_path / "out", IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2, seed=5))


def test_a_damaged_shard_is_rebuilt_on_rerun(kaggle_dir, tmp_path):
    run(kaggle_dir, tmp_path / "out")
    victim = tmp_path / "out" / "train-00001.h5"
    victim.write_bytes(b"garbage")
    result = run(kaggle_dir, tmp_path / "out")
    assert not result["unchanged"] and result["reused_shards"] == result["totals"]["shards"] - 1
    assert verify_shards(load_manifest(str(tmp_path / "out"))) == []


def test_killed_ingest_resumes_to_the_same_result(tmp_path):
    src = make_kaggle_folder(str(tmp_path / "train"), cats=150, dogs=150)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from ingest import IngestSettings, ingest\n"
        "ingest(sys.argv[2], sys.argv[3], IngestSettings(size=(48, 64), shard_size=10), "
        "scheduler='sync', progress=False)\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", script, ROOT, src, str(out)])
    deadline = time.time() + 60
    while time.time() < deadline and len([p for p in os.listdir(out) if p.endswith(".h5")] if out.exists() else []) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    resumed = ingest(src, str(out), IngestSettings(size=(48, 64), shard_size=10), scheduler="sync", progress=False)
    assert resumed["reused_shards"] >= 3
    assert not [p for p in os.listdir(out) if ".tmp-" in p]
    clean = ingest(src, str(tmp_path / "clean"), IngestSettings(size=(48, 64), shard_size=10),
                   scheduler="sync", progress=False)
    assert resumed["shards"] == clean["shards"]  # same files, counts and sha256


def _progress_counts(stderr):
    """(done, total) of the last progress line written."""
    *_, last = re.finditer(r"(\d+)/(\d+) img", stderr)
    return int(last.group(1)), int(last.group(2))


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_each_scheduler_gives_the_sync_shards_skips_and_progress(kaggle_dir, tmp_path, capsys, scheduler):
    _bad_files(kaggle_dir)
    settings = IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2, max_pixels=50_000)
    parallel = run(kaggle_dir, tmp_path / "a", settings, scheduler=scheduler, workers=2, progress=True)
    on_parallel = capsys.readouterr().err
    serial = run(kaggle_dir, tmp_path / "b", settings, progress=True)
    assert parallel["shards"] == serial["shards"] and parallel["skipped"] == serial["skipped"]
    assert len(parallel["skipped"]) == 6
    # Every shard counted once: the bar ends at its total, the 40 images plus the 4 files that
    # fail to decode (the empty file and the broken link are left out before decoding).
    assert _progress_counts(on_parallel) == _progress_counts(capsys.readouterr().err) == (44, 44)


def test_local_cluster_run_equals_local_run(kaggle_dir, tmp_path):
    distributed = pytest.importorskip("distributed")
    _bad_files(kaggle_dir)
    settings = IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2, max_pixels=50_000)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        on_cluster = run(kaggle_dir, tmp_path / "cluster", settings, scheduler=cluster.scheduler_address,
                         shared_disk=True)
    local = run(kaggle_dir, tmp_path / "local", settings)
    assert on_cluster["shards"] == local["shards"] and on_cluster["skipped"] == local["skipped"]
    assert len(on_cluster["skipped"]) == 6


def test_unreachable_scheduler_is_a_user_error(kaggle_dir, tmp_path):
    with pytest.raises(UserError, match="cannot reach Dask scheduler"):
        run(kaggle_dir, tmp_path / "out", scheduler="tcp://127.0.0.1:9", shared_disk=True)


def test_zip_is_read_in_place_with_test1_as_unlabeled(kaggle_dir, tmp_path):
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(kaggle_dir)):
            z.write(os.path.join(kaggle_dir, name), f"train/{name}")
        for i in range(3):
            z.write(make_image(tmp_path / f"u{i}.jpg", 1, 200 + i), f"test1/{i + 1}.jpg")
        z.write(os.path.join(kaggle_dir, "cat.0.jpg"), "test1/4.jpg")  # a copy of a labelled file
    from_zip = run(archive, tmp_path / "z")
    from_dir = run(kaggle_dir, tmp_path / "d")
    assert from_zip["splits"]["unlabeled"]["count"] == 3
    # the labelled copy wins over the unlabelled one
    assert from_zip["duplicates"] == [{"name": "test1/4.jpg", "same_as": "train/cat.0.jpg"}]
    for split in ("train", "val", "test"):
        assert from_zip["splits"][split] == from_dir["splits"][split]
    data = read_all(tmp_path / "z")
    assert data["unlabeled"][1].tolist() == [-1, -1, -1]
    assert not (set(data["unlabeled"][0]) & set(data["train"][0] + data["val"][0] + data["test"][0]))


def test_kaggle_parent_folder_and_class_folders(tmp_path):
    parent = tmp_path / "kaggle"
    make_kaggle_folder(str(parent / "train"), cats=10, dogs=10)
    (parent / "test1").mkdir()
    make_image(parent / "test1" / "1.jpg", 1, 1)
    assert run(parent, tmp_path / "a")["splits"]["unlabeled"]["count"] == 1

    pets = tmp_path / "PetImages"
    for folder, label in (("Cat", 1), ("Dog", 0)):
        (pets / folder).mkdir(parents=True)
        for i in range(10):
            make_image(pets / folder / f"{i}.JPG", label, i + 50 * label)
    (pets / "Cat" / "Thumbs.db").write_bytes(b"\0\1")
    result = run(pets, tmp_path / "b")
    assert result["source"]["layout"] == "class-folders"
    assert result["totals"]["images"] == 20 and result["totals"]["skipped"] == 1
    data = read_all(tmp_path / "b")
    for names, labels, images in data.values():
        assert [decoded_label(im) for im in images] == labels.tolist()
        assert labels.tolist() == [1 if n.startswith("Cat/") else 0 for n in names]


def test_count_options_and_impossible_requests(kaggle_dir, tmp_path):
    result = run(kaggle_dir, tmp_path / "a", IngestSettings(size=(16, 20), val=10, test=6))
    assert (result["splits"]["val"]["count"], result["splits"]["test"]["count"]) == (10, 6)
    with pytest.raises(UserError, match="ask for 60 images but only 40 labelled"):
        run(kaggle_dir, tmp_path / "b", IngestSettings(size=(16, 20), val=30, test=30))
    with pytest.raises(UserError, match="only 20 exist"):
        run(kaggle_dir, tmp_path / "b", IngestSettings(size=(16, 20), val=0.5, test=25))
    with pytest.raises(UserError, match="leave images for training"):
        run(kaggle_dir, tmp_path / "c", IngestSettings(size=(16, 20), val=0.6, test=0.5))


def test_real_kaggle_sample(sample_dir, tmp_path):
    result = run(sample_dir, tmp_path / "out", IngestSettings(shard_size=500), scheduler="processes")
    splits = result["splits"]
    assert splits["train"]["count"] + splits["val"]["count"] + splits["test"]["count"] == 2002 - result["totals"]["duplicates"] - result["totals"]["skipped"]
    assert splits["val"]["class_counts"][1] == splits["val"]["class_counts"][0] == 100
    with ShardReader(os.path.join(tmp_path, "out", "train-00000.h5")) as shard:
        images = shard.read(0, 64)
        assert images.shape == (64, 94, 125, 3) and images.std() > 20  # real photos, not blank
        assert 0 < shard.labels.mean() < 1
    assert verify_shards(load_manifest(str(tmp_path / "out"))) == []


def test_a_shard_with_damaged_pixels_but_intact_metadata_is_rebuilt(kaggle_dir, tmp_path):
    run(kaggle_dir, tmp_path / "out")
    victim = tmp_path / "out" / "train-00000.h5"
    clean = victim.read_bytes()
    with ShardReader(str(victim)) as shard:
        offset = shard.images.id.get_offset() or shard.images.id.get_chunk_info(0).byte_offset
    with open(victim, "r+b") as f:  # flip one pixel byte; the file still opens fine
        f.seek(offset + 10)
        byte = f.read(1)
        f.seek(offset + 10)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = run(kaggle_dir, tmp_path / "out")
    assert result["reused_shards"] == result["totals"]["shards"] - 1
    assert victim.read_bytes() == clean
