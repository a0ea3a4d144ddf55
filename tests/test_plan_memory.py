"""The ingest driver's planning at scale (issue 12 item 8): files as rows, names and records on disk.

Two promises: the plan is exactly what it was when the driver held a Python
object per file (pinned below), and planning holds a few bytes per file,
not hundreds (measured with tracemalloc on two input sizes).
"""
import hashlib
import json
import os
import shutil
import tracemalloc

import numpy as np
from PIL import Image

import ingest.catalogue
import ingest.fingerprint
import ingest.plan
import ingest.scan
from ingest import IngestSettings, ingest as run_ingest
from ingest.run import _plan
from tests.test_fingerprint import textured

SETTINGS = IngestSettings(size=(8, 8), shard_size=5, val=0.2, test=3, seed=7)

# The manifest of tricky_folder() under SETTINGS (its source path left out),
# recorded with the code before this change (commit a080b13), which held
# every file as Python objects. The plan must not change with how the
# driver holds the files: same splits, same shards in the same order, same
# lists of copies, groups and conflicts.
PINNED = "7cb942f36bf04208b3312f3676d14dcb45a5b7fed7ed9d5cc0b7aab328293ed0"


def save(image, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, "PNG")


def tricky_folder(root):
    """Class folders whose names sort around "/" (a, a-b, a.b, b), images at two depths, exact copies
    under one class and under two, near copies under one class and under two, and a file that is no image."""
    seed = 0
    for name, count in (("a", 9), ("a-b", 8), ("a.b", 7), ("b", 10)):
        for i in range(count):
            sub = "deep/" if i % 4 == 0 else ""
            save(textured(seed, size=(24, 32)), os.path.join(root, name, f"{sub}{i:02d}.png"))
            seed += 1
    shutil.copy(os.path.join(root, "a", "01.png"), os.path.join(root, "b", "copy-of-a01.png"))
    shutil.copy(os.path.join(root, "b", "02.png"), os.path.join(root, "b", "z-copy.png"))
    near = Image.open(os.path.join(root, "a", "03.png")).resize((30, 22), Image.BILINEAR)
    save(near, os.path.join(root, "a", "near-03.png"))
    other = Image.open(os.path.join(root, "b", "05.png")).resize((28, 20), Image.BILINEAR)
    save(other, os.path.join(root, "a-b", "near-b05.png"))
    with open(os.path.join(root, "b", "notes.txt"), "w") as f:
        f.write("not an image")
    return root


def manifest_digest(out):
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["source"]["path"] = None
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def test_the_plan_of_a_tricky_set_is_what_it_was_with_an_object_per_file(tmp_path):
    src = tricky_folder(str(tmp_path / "in"))
    result = run_ingest(src, str(tmp_path / "out"), SETTINGS, scheduler="sync", progress=False)
    totals = result["totals"]
    assert (totals["duplicates"], totals["label_conflicts"], totals["near_duplicate_groups"],
            totals["near_duplicate_conflicts"]) == (1, 1, 2, 1)
    assert manifest_digest(tmp_path / "out") == PINNED


def noise_folder(root, count):
    """`count` distinct 16x16 PNGs of random pixels (so unrelated fingerprints) in 10 class folders."""
    for n in range(count):
        pixels = np.random.default_rng(n).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        save(Image.fromarray(pixels), os.path.join(root, f"c{n % 10}", f"{n:05d}.png"))
    return root


def traced_peak(function, *args):
    """(tracemalloc's peak of `function(*args)` in bytes, its result)."""
    tracemalloc.start()
    try:
        result = function(*args)
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_planning_holds_a_few_bytes_per_file_not_an_object(tmp_path, monkeypatch):
    # Chunks much smaller than the inputs, so what is held per chunk shows
    # as the constant it is and only what is held per file grows. (Not
    # below ~130 rows: NumPy keeps freed buffers under 1 KB for reuse,
    # which tracemalloc would count as held.) Near-duplicates are not
    # looked for here (a faster scan); their search has its own test below.
    for module, name in ((ingest.catalogue, "CHUNK_ROWS"), (ingest.plan, "PART_ROWS"), (ingest.scan, "CHUNK_FILES")):
        monkeypatch.setattr(module, name, 200)
    settings = IngestSettings(size=(8, 8), shard_size=100, near_distance=None)
    small, large = 400, 1600
    peaks = {}
    for count in (small, large):
        src = noise_folder(str(tmp_path / f"in{count}"), count)
        peaks[count], plan = traced_peak(_plan, src, settings, None, False, "sync")
        assert len(plan.specs) == -(-count * 8 // 1000) + 2 * -(-count // 1000)  # 80% train, 10% val and test
    per_file = (peaks[large] - peaks[small]) / (large - small)
    # A file costs a few bytes of NumPy columns at any time (its label, its
    # split, a flag, its row in a split: see ingest.catalogue), plus its
    # share of one folder's listing while its folder is read (10 folders
    # here); as a Python object it cost ~380 bytes here, ~700 at 250,000.
    assert per_file < 24, f"{per_file:.0f} bytes per file (peaks {peaks})"


def test_the_near_duplicate_search_holds_a_few_bytes_per_fingerprint():
    peaks = {}
    for count in (20_000, 80_000):
        fingerprints = np.random.default_rng(count).integers(0, 2**63, count, dtype=np.uint64)
        planted = fingerprints.copy()
        planted[1::1000] = fingerprints[::1000][:len(planted[1::1000])] ^ np.uint64(0b10110)  # 3 bits apart
        peaks[count], pairs = traced_peak(ingest.fingerprint.near_pairs, planted, 6)
        assert {(int(a), int(b)) for a, b in pairs} >= {(i, i + 1) for i in range(0, count - 1, 1000)}
        # Nothing per item: a few hundred bytes per linked pair (union-find over their ends).
        assert traced_peak(ingest.fingerprint.groups, count, pairs)[0] < 256 * len(pairs) + 16384
    # Beyond the fingerprints given: each one's part number (2 bytes) and a
    # flag while its part is picked; sorting them all at once cost 40 bytes.
    assert (peaks[80_000] - peaks[20_000]) / 60_000 < 12, peaks
