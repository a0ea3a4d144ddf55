"""Fault suite, ingest: hostile input, concurrent runs, full disks, kills and crashes.

Each case is one line of a table. A per-file problem must end as a skip
with its reason, a user mistake as one `Error:` line with exit code 2, and
every interruption must resume to exactly the shards of an uninterrupted run.
"""
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from ingest import IngestSettings, ingest
from ingest.worker import CRASH_ENV, CRASH_EXIT
from shards import UserError, load_manifest, verify_shards
from tests.conftest import ROOT, make_image, make_kaggle_folder
from tests.faults.test_images import dds_with_unknown_pixel_format

SMALL = IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2)
CLI = [sys.executable, os.path.join(ROOT, "cli.py")]


def run(src, out, settings=SMALL, **kwargs):
    kwargs.setdefault("scheduler", "sync")
    kwargs.setdefault("progress", False)
    return ingest(str(src), str(out), settings, **kwargs)


def cli_ingest(src, out, *options, env=None, timeout=60, **popen):
    """`python cli.py -q ingest SRC --out OUT ...` in a subprocess: (returncode, stderr lines)."""
    proc = subprocess.run([*CLI, "-q", "ingest", str(src), "--out", str(out), "--scheduler", "sync", *options],
                          capture_output=True, text=True, timeout=timeout, env=env, **popen)
    return proc.returncode, proc.stderr.strip().splitlines()


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def shard_state(out):
    """What must be identical after any interruption: manifest shard entries and every shard's bytes."""
    manifest = load_manifest(str(out))
    return manifest.data["shards"], {e["file"]: sha256(manifest.shard_path(e)) for e in manifest.shards()}


def temp_files(out):
    return sorted(name for name in os.listdir(out) if ".tmp-" in name)


# --- item 3: one writer per --out ---------------------------------------------

HOLD_LOCK = (
    "import sys, time; sys.path.insert(0, sys.argv[1])\n"
    "from shards.fsio import FolderLock\n"
    "FolderLock(sys.argv[2]).acquire(); print('locked', flush=True); time.sleep(60)\n")


def test_a_second_ingest_into_a_busy_out_gets_one_line_and_a_killed_holder_blocks_nothing(kaggle_dir, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, ROOT, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(cli, ["ingest", kaggle_dir, "--out", str(out), "--size", "16x20",
                                          "--scheduler", "sync"])
        assert result.exit_code == 2
        # The scan (which reads the input, not --out) runs before the lock is taken: its progress line comes first.
        assert [line for line in result.output.strip().splitlines() if not line.startswith("scan [")] == [
            f"Error: shard folder {out} is being written by another kibble process "
            f"(pid {holder.pid}); wait for it to finish, or use another folder"]
        assert not (out / "manifest.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    run(kaggle_dir, out)  # the killed holder's lock went with it
    assert verify_shards(load_manifest(str(out))) == []


def test_stale_temp_files_are_removed_even_when_the_output_is_complete(kaggle_dir, tmp_path):
    out = tmp_path / "out"
    run(kaggle_dir, out)
    for name in (".train-00000.h5.tmp-99999", ".manifest.json.tmp-4242"):
        (out / name).write_bytes(b"left by a killed ingest")
    assert run(kaggle_dir, out)["unchanged"]
    assert temp_files(out) == []


# --- item 6: --val N / --test N give exactly N --------------------------------

@pytest.mark.parametrize("option, count", [
    ("val", 1), ("val", 3), ("val", 5), ("val", 7),
    ("test", 1), ("test", 3), ("test", 5), ("test", 7),
])
def test_a_count_gives_exactly_that_many_images(kaggle_dir, tmp_path, option, count):
    other = "test" if option == "val" else "val"
    settings = IngestSettings(size=(8, 8), shard_size=64, **{option: float(count), other: 0.1})
    splits = run(kaggle_dir, tmp_path / "out", settings)["splits"]
    assert splits[option]["count"] == count
    assert abs(splits[option]["class_counts"][1] - splits[option]["class_counts"][0]) <= 1  # 20 cats, 20 dogs: balanced
    assert splits[other]["count"] == 4  # 0.1 of each class of 20
    assert sum(s["count"] for s in splits.values()) == 40


@pytest.mark.parametrize("val, test, expected", [
    # (val, test) -> {split: (cats, dogs)} on 30 cats and 10 dogs
    (5.0, 5.0, {"val": (4, 1), "test": (4, 1)}),      # quotas 3.75 / 1.25: the larger remainder wins
    (1.0, 1.0, {"val": (1, 0), "test": (1, 0)}),
    (2.0, 7.0, {"val": (2, 0), "test": (5, 2)}),       # 1.5 / 0.5: tie broken towards the larger class
    (0.15, 0.25, {"val": (5, 2), "test": (8, 3)}),     # fractions: per class, halves up (4.5 -> 5, 1.5 -> 2, 2.5 -> 3)
])
def test_counts_follow_class_sizes_by_largest_remainder(tmp_path, val, test, expected):
    src = make_kaggle_folder(str(tmp_path / "train"), cats=30, dogs=10)
    splits = run(src, tmp_path / "out", IngestSettings(size=(8, 8), shard_size=64, val=val, test=test))["splits"]
    assert {name: (splits[name]["class_counts"][1], splits[name]["class_counts"][0]) for name in expected} == expected


def test_one_val_and_one_test_image_come_from_different_classes_when_balanced(kaggle_dir, tmp_path):
    splits = run(kaggle_dir, tmp_path / "out", IngestSettings(size=(8, 8), val=1.0, test=1.0))["splits"]
    assert (splits["val"]["class_counts"][1], splits["test"]["class_counts"][0]) == (1, 1)


# --- item 8: identical bytes under two labels ---------------------------------

@pytest.mark.parametrize("policy, kept", [("drop", None), ("first", "cat.1.jpg")])
def test_identical_files_under_two_labels_are_a_conflict(kaggle_dir, tmp_path, policy, kept):
    shutil.copy(os.path.join(kaggle_dir, "cat.1.jpg"), os.path.join(kaggle_dir, "dog.900.jpg"))
    settings = IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2, label_conflicts=policy)
    result = run(kaggle_dir, tmp_path / "out", settings)
    assert result["label_conflicts"] == [{"names": ["cat.1.jpg", "dog.900.jpg"], "labels": [1, 0], "kept": kept}]
    assert result["duplicates"] == [] and result["totals"]["label_conflicts"] == 1
    names = {n for entry in load_manifest(str(tmp_path / "out")).shards()
             for n in _shard_names(tmp_path / "out" / entry["file"])}
    assert "dog.900.jpg" not in names
    assert ("cat.1.jpg" in names) == (kept is not None)
    assert result["totals"]["images"] == (40 if kept else 39)


def _shard_names(path):
    from shards import ShardReader

    with ShardReader(str(path)) as shard:
        return shard.names


def test_label_conflict_policy_is_a_cli_option(kaggle_dir, tmp_path):
    shutil.copy(os.path.join(kaggle_dir, "cat.1.jpg"), os.path.join(kaggle_dir, "dog.900.jpg"))
    result = CliRunner().invoke(cli, ["ingest", kaggle_dir, "--out", str(tmp_path / "out"), "--size", "16x20",
                                      "--scheduler", "sync", "--label-conflicts", "first"])
    assert result.exit_code == 0, result.output
    assert "1 label conflicts" in result.output
    assert load_manifest(str(tmp_path / "out")).data["label_conflicts"][0]["kept"] == "cat.1.jpg"


# --- items 9, 10, 14: one odd file never stops a run --------------------------

def _dds(folder, name):
    (folder / name).write_bytes(dds_with_unknown_pixel_format())


def _self_link(folder, name):
    (folder / name).symlink_to(name)


def _fifo(folder, name):
    os.mkfifo(folder / name)


def _folder(folder, name):
    (folder / name).mkdir()
    make_image(folder / name / "cat.1.jpg", 1, 1)


@pytest.mark.parametrize("name, make, reason", [
    ("cat.999.jpg", _dds, "cannot decode: NotImplementedError: Unimplemented pixel format"),
    ("cat.401.jpg", _self_link, "unreadable: Too many levels of symbolic links"),
    ("cat.402.jpg", _fifo, "not a regular file (a FIFO)"),
    ("dog.403.jpg", _fifo, "not a regular file (a FIFO)"),  # two FIFOs: same size, would be hashed
])
def test_an_odd_file_is_skipped_with_its_reason(kaggle_dir, tmp_path, name, make, reason):
    from pathlib import Path

    make(Path(kaggle_dir), name)
    if make is _fifo:
        _fifo(Path(kaggle_dir), "cat.404.jpg")
    result = run(kaggle_dir, tmp_path / "out")
    reasons = {s["name"]: s["reason"] for s in result["skipped"]}
    assert reasons[name].startswith(reason), reasons
    assert result["totals"]["images"] == 40
    assert (tmp_path / "out" / "manifest.json").exists()


def test_a_folder_named_like_an_image_is_not_an_image(kaggle_dir, tmp_path):
    from pathlib import Path

    _folder(Path(kaggle_dir), "cat.405.jpg")
    result = run(kaggle_dir, tmp_path / "out")
    assert result["totals"]["images"] == 40 and "cat.405.jpg" not in {s["name"] for s in result["skipped"]}


def _class_folders(root):
    for folder, label in (("Cat", 1), ("Dog", 0)):
        (root / folder).mkdir(parents=True)
        for i in range(6):
            make_image(root / folder / f"{i}.jpg", label, i + 50 * label)
    return root


def _without_root_powers():
    """A command prefix under which permissions bind: empty for a normal user; for root,
    setpriv drops the capabilities that let root read any folder (the kernel then checks
    the mode bits for root as for anyone). None if that is not possible here."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if setpriv else None


def test_an_unreadable_class_folder_is_skipped_with_its_reason(tmp_path):
    prefix = _without_root_powers()
    if prefix is None:
        pytest.skip("running as root without setpriv: chmod 000 does not stop root, so nothing to test")
    pets = _class_folders(tmp_path / "PetImages")
    os.chmod(pets / "Cat", 0)
    try:
        proc = subprocess.run([*prefix, *CLI, "-q", "ingest", str(pets), "--out", str(tmp_path / "out"),
                               "--size", "8x8", "--scheduler", "sync"], capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(pets / "Cat", 0o755)
    if prefix and proc.returncode != 0 and proc.stderr.startswith("setpriv"):
        pytest.skip(f"setpriv cannot drop root's capabilities here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(str(tmp_path / "out")).data
    assert manifest["skipped"] == [{"name": "Cat", "reason": "cannot list folder: Permission denied"}]
    assert manifest["totals"]["images"] == 6


def _zip_with_big_member(path, member_bytes):
    """A small zip holding a few real images and `member_bytes` of zeros named train/cat.50.jpg."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for i in range(4):
            for kind, label in (("cat", 1), ("dog", 0)):
                buffer = _jpeg(label, i)
                archive.writestr(f"train/{kind}.{i}.jpg", buffer)
        with archive.open("train/cat.50.jpg", "w", force_zip64=True) as member:
            block = bytes(1 << 20)
            for _ in range(member_bytes >> 20):
                member.write(block)
    return path


def _jpeg(label, number):
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200 if label else 40, 40 * number, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


PEAK_RSS = (
    "import json, resource, sys; sys.path.insert(0, sys.argv[1])\n"
    "from ingest import IngestSettings, ingest\n"
    "import h5py, numpy, PIL.Image  # everything ingest imports, before the baseline\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "result = ingest(sys.argv[2], sys.argv[3], IngestSettings(size=(16, 20)), scheduler='sync', progress=False)\n"
    "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "print(json.dumps({'growth_kib': after - before, 'skipped': result['skipped'],\n"
    "                  'images': result['totals']['images']}))\n")


def test_a_huge_zip_member_is_refused_by_its_declared_size_without_reading_it(tmp_path):
    member = 384 << 20  # over the default cap: 4 bytes x 89,478,485 pixels + 1 MiB = 358.9 MB
    archive = _zip_with_big_member(tmp_path / "train.zip", member)
    assert archive.stat().st_size < 2_000_000
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, ROOT, str(archive), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == 8
    assert report["skipped"] == [{"name": "train/cat.50.jpg", "reason":
                                  "zip member declares 402,653,184 bytes uncompressed, over the limit of "
                                  "358,962,516 bytes for --max-pixels (4 bytes a pixel plus 1 MiB)"}]
    assert report["growth_kib"] * 1024 < member / 8, report["growth_kib"]


def test_a_zip_member_zipfile_cannot_inflate_is_skipped(tmp_path):
    """Compression method 99 (AES): zipfile raises NotImplementedError when reading it."""
    path = tmp_path / "train.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(3):
            # Bytes after the end marker make every size distinct: nothing is read before the workers.
            archive.writestr(f"train/cat.{i}.jpg", _jpeg(1, i) + bytes(10 * i))
            archive.writestr(f"train/dog.{i}.jpg", _jpeg(0, i) + bytes(100 + 10 * i))
    data = bytearray(path.read_bytes())
    name = b"train/cat.1.jpg"
    local = _header_offset(data, b"PK\x03\x04", 30, 26, name)
    central = _header_offset(data, b"PK\x01\x02", 46, 28, name)
    data[local + 8:local + 10] = (99).to_bytes(2, "little")
    data[central + 10:central + 12] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    result = run(path, tmp_path / "out", IngestSettings(size=(8, 8)))
    assert result["totals"]["images"] == 5
    [skip] = result["skipped"]
    assert skip["name"] == "train/cat.1.jpg" and skip["reason"].startswith("unreadable zip member:"), skip


def _header_offset(data, signature, fixed, name_length_at, name):
    """Offset of the zip header with `signature` whose file name is `name`."""
    start = 0
    while True:
        start = data.index(signature, start)
        length = int.from_bytes(data[start + name_length_at:start + name_length_at + 2], "little")
        if data[start + fixed:start + fixed + length] == name:
            return start
        start += 4


# --- item 11: option values that make no sense --------------------------------

@pytest.mark.parametrize("option, value", [
    ("--seed", "-1"), ("--seed", str(2**64)),
    ("--val", "nan"), ("--val", "inf"), ("--val", "-0.1"), ("--val", "1e300"), ("--val", "2.5"),
    ("--test", "nan"), ("--test", "-inf"), ("--test", "-3"), ("--test", "1e20"),
])
def test_nonsense_options_exit_2_naming_the_option(tmp_path, kaggle_dir, option, value):
    result = CliRunner().invoke(cli, ["ingest", kaggle_dir, "--out", str(tmp_path / "out"), option, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, message", [
    ("seed", -1, "seed must be a whole number"),
    ("seed", 1.5, "seed must be a whole number"),
    ("val", float("nan"), "val must be a finite number"),
    ("val", float("inf"), "val must be a finite number"),
    ("test", float("nan"), "test must be a finite number"),
    ("test", -2.0, "test must not be negative"),
    ("val", 1e300, "val must be a count of at most"),
    ("size", (4, 4), "size must be"),
    ("label_conflicts", "both", "label_conflicts must be one of"),
])
def test_nonsense_settings_are_a_user_error(kaggle_dir, tmp_path, field, value, message):
    with pytest.raises(UserError, match=message):
        IngestSettings(**{field: value}).validate()  # as TrainSettings.validate does
    with pytest.raises(UserError, match=message):
        run(kaggle_dir, tmp_path / "out", IngestSettings(**{field: value}))
    assert not (tmp_path / "out").exists()


# --- item 12: disks that refuse -----------------------------------------------

def _noise_folder(folder, count=20, side=128):
    """Images of random pixels: they do not compress."""
    os.makedirs(folder)
    rng = np.random.default_rng(12)
    for i in range(count):
        for kind in ("cat", "dog"):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{kind}.{i}.png"))
    return folder


def _in_private_mount(mount_options, shell, timeout=120):
    """Run `shell` with a tmpfs (`mount_options`) at $M, in a mount namespace of its own:
    the mount vanishes with the command, whatever happens. Skips where that is not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    mount_point = tempfile.mkdtemp(prefix="kibble-mnt-", dir="/tmp")
    try:
        script = f'M={mount_point}; mount -t tmpfs -o {mount_options} kibble "$M" || exit 99\n{shell}'
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        os.rmdir(mount_point)
    if proc.returncode == 99 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    return proc, mount_point


def _listing(stdout):
    return sorted(stdout.split())


CLI_SH = " ".join(CLI)


@pytest.mark.parametrize("case, mount_options, before, options, expected", [
    ("full disk, checked before starting", "size=1m", "", "--size 128x128",
     "Error: --out {M}/out needs about 2.2 MB for 40 images of 128x128, but only 1.0 MB is free there; "
     "free some space, choose a smaller --size, pass --compression lzf, or choose another --out"),
    ("full disk while writing (compressed: not checked before)", "size=1m", "",
     "--size 128x128 --compression gzip",
     "Error: cannot write {M}/out/train-00000.h5: No space left on device"),
    ("read-only file system", "size=64m,ro", "", "--size 16x20",
     "Error: cannot write {M}/out: Read-only file system"),
    ("read-only file system, folder exists", "size=64m", "mkdir $M/out && mount -o remount,ro $M", "--size 16x20",
     "Error: cannot write {M}/out/.lock: Read-only file system"),
])
def test_a_disk_that_refuses_gives_one_line_and_leaves_no_temp_file(tmp_path, case, mount_options, before,
                                                                    options, expected):
    src = _noise_folder(str(tmp_path / "noise"))
    shell = (f"{before}\n{CLI_SH} -q ingest {src} --out $M/out --scheduler sync {options}; echo rc=$?\n"
             "ls -A $M/out 2>/dev/null")
    proc, mount_point = _in_private_mount(mount_options, shell)
    lines = proc.stdout.split()
    assert lines[0] == "rc=2", (case, proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == [expected.format(M=mount_point)], case
    assert not [name for name in lines[1:] if ".tmp-" in name], case
    assert "manifest.json" not in lines[1:]


def test_the_estimate_behind_the_free_space_check_matches_the_issue_example():
    """--size 4096x4096 on the 2,002-image sample: about 100 GB of pixels (plus HDF5's last chunks)."""
    from ingest.plan import shard_specs, split_items
    from ingest.run import estimated_bytes
    from ingest.sources import Item

    items = [Item(f"{kind}.{i}.jpg", label) for kind, label in (("cat", 1), ("dog", 0)) for i in range(1001)]
    settings = IngestSettings(size=(4096, 4096))
    classes = ["dog", "cat"]
    estimate = estimated_bytes(shard_specs(split_items(items, settings, classes)[0], settings, classes), settings)
    assert 2002 * 4096 * 4096 * 3 < estimate < 1.1 * 2002 * 4096 * 4096 * 3 + 64 * 4096 * 4096 * 3 * 4


def _limit_file_size(limit):
    """preexec_fn: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored, so write() returns the error)."""
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("scheduler", ["sync", "processes"])
def test_a_file_size_limit_gives_one_line_naming_the_shard(tmp_path, scheduler):
    src = _noise_folder(str(tmp_path / "noise"), count=10, side=64)
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "-q", "ingest", src, "--out", str(out), "--size", "64x64", "--shard-size", "10",
                           "--val", "0", "--test", "0", "--scheduler", scheduler, "--workers", "2"],
                          capture_output=True, text=True, timeout=60, preexec_fn=_limit_file_size(60_000))
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"Error: cannot write {out}/train-0000") and line.endswith(".h5: File too large"), line
    assert temp_files(out) == [] and not (out / "manifest.json").exists()


# --- item 15: workers end with a killed ingest --------------------------------

def _busy_folder(folder, count):
    """`count` cats and dogs, distinct 600x800 JPEGs that take a while to decode and store.

    Distinct pictures, not only distinct bytes: copies of one picture would
    be one near-duplicate group under two labels, left out as a likely label error.
    """
    os.makedirs(folder)
    rng = np.random.default_rng(15)
    noise = rng.integers(0, 128, (600, 800, 3), dtype=np.uint8)
    for i in range(count):
        for kind in ("cat", "dog"):
            # Coarse 6x8 blocks of random brightness give each picture its own shape.
            coarse = np.kron(rng.integers(0, 128, (6, 8, 1), dtype=np.uint8), np.ones((100, 100, 3), np.uint8))
            with open(os.path.join(folder, f"{kind}.{i}.jpg"), "wb") as f:
                f.write(_encode(Image.fromarray(noise + coarse)))
    return folder


def _encode(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_kill_9_of_the_ingest_ends_its_workers_and_a_rerun_completes_it(tmp_path):
    """Identical shards after a resumed kill -9 are proven by test_ingest.py and the crash points below."""
    psutil = pytest.importorskip("psutil")
    src = _busy_folder(str(tmp_path / "train"), 50)
    out = tmp_path / "out"
    main = subprocess.Popen([*CLI, "-q", "ingest", src, "--out", str(out), "--size", "300x400", "--shard-size", "5",
                             "--scheduler", "processes", "--workers", "2"])
    workers = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            workers = psutil.Process(main.pid).children(recursive=True)
            shards = [p for p in os.listdir(out) if p.endswith(".h5")] if out.exists() else []
            if len(workers) >= 2 and len(shards) >= 2:
                break
            time.sleep(0.01)
        assert len(workers) >= 2, "the workers never started"
        main.send_signal(signal.SIGKILL)
        main.wait()
        assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
        gone, alive = psutil.wait_procs(workers, timeout=5)
        assert alive == [], f"workers outlived the killed ingest: {[p.pid for p in alive]}"
    finally:
        for process in workers:
            with contextlib.suppress(psutil.Error):
                process.kill()
    resumed = ingest(src, str(out), IngestSettings(size=(300, 400), shard_size=5), scheduler="processes",
                     workers=2, progress=False)
    assert resumed["reused_shards"] >= 2 and resumed["totals"]["images"] == 100
    assert temp_files(out) == [] and verify_shards(load_manifest(str(out))) == []


# --- crash points in the commit sequence --------------------------------------

CRASH_SETTINGS = IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2)


@pytest.fixture(scope="module")
def crash_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    src = make_kaggle_folder(str(root / "train"))
    ingest(src, str(root / "clean"), CRASH_SETTINGS, scheduler="sync", progress=False)
    return src, shard_state(root / "clean")


def _crashed_ingest(src, out, step):
    """Ingest in a forked child that ends itself at `step`; returns its exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.environ[CRASH_ENV] = step
            ingest(src, str(out), CRASH_SETTINGS, scheduler="sync", progress=False)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("step, manifest_left", [
    ("shard-writing", False),          # first shard's temp file half written
    ("shard-writing:3", False),        # two shards whole, the third's temp file half written
    ("shard-renamed", False),          # first shard renamed into place, nothing more
    ("shard-renamed:4", False),
    ("manifest-before", False),        # every shard written, no manifest
    ("manifest-temp-written", False),  # the manifest's temp file complete, not renamed
    ("manifest-renamed", True),        # all done but the process had not returned
])
def test_a_crash_at_each_commit_step_resumes_to_the_uninterrupted_result(crash_input, tmp_path, step,
                                                                         manifest_left):
    src, expected = crash_input
    out = tmp_path / "out"
    assert _crashed_ingest(src, out, step) == CRASH_EXIT
    assert (out / "manifest.json").exists() == manifest_left
    resumed = ingest(src, str(out), CRASH_SETTINGS, scheduler="sync", progress=False)
    assert resumed["unchanged"] == manifest_left
    assert shard_state(out) == expected
    assert temp_files(out) == []
    assert verify_shards(load_manifest(str(out))) == []
