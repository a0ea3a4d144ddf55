"""Ingest benchmark: our `ingest` against the decode floor and the tutorial's loop.

    python benchmarks/bench_ingest.py /work/bench25k

INPUT is a Kaggle-shaped folder (INPUT/train/cat.N.jpg, dog.N.jpg, or that
train/ folder itself) at original resolution. One run measures, on the same
machine and the same files:

* our ingest (`python cli.py -q ingest INPUT --out TMP --force`, a
  subprocess) on a 5,000-image subset (symlinks to the first 2,500 cats and
  2,500 dogs) and on the whole folder: wall time, images/s, the peak of the
  summed RSS of the whole process tree (driver plus worker processes, sampled
  with psutil every 50 ms) and the largest single process's ru_maxrss;
* the decode floor: Pillow draft decode + bilinear resize to 125x94, one
  process per core, nothing kept; once with Pillow's default draft scale and
  once with the scale our loader asks for (shards.image._draft_request);
* the tutorial's way on 5,000 images: open, convert, resize without draft,
  append to a list, np.array at the end.

Every file is read once before timing, so all lines start from a warm page
cache. The table goes to stdout, progress to stderr. Not a test.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.measure import MAKE_TOOL, SAMPLE_SECONDS, OtherLoad, missing_input, run_measured  # noqa: E402
from shards.image import DEFAULT_SIZE  # noqa: E402

SIZE = DEFAULT_SIZE  # (height, width): what `ingest` stores unless told otherwise
SUBSET_PER_CLASS = 2500
MB = 1e6
_NAME = re.compile(r"^(cat|dog)\.(\d+)\.jpe?g$", re.IGNORECASE)

# Targets from docs/MISSION: ingest >= 85% of the decode floor, peak RSS
# <= 600 MB and flat (within ~10%) from 5k to 25k images.
TARGET_RATIO = 0.85
TARGET_PEAK_MB = 600
TARGET_FLATNESS = 0.10
NOISY_CORES = 0.2


def say(message):
    print(message, file=sys.stderr, flush=True)


# --- the input ----------------------------------------------------------------

def image_folder(path):
    """The folder holding cat.N.jpg / dog.N.jpg: INPUT/train or INPUT itself."""
    train = os.path.join(path, "train")
    return train if os.path.isdir(train) else path


def kaggle_files(folder):
    """{'cat': [paths by N], 'dog': [...]} of a Kaggle-shaped folder."""
    found = {"cat": [], "dog": []}
    for name in os.listdir(folder):
        match = _NAME.match(name)
        if match:
            found[match.group(1).lower()].append((int(match.group(2)), os.path.join(folder, name)))
    return {kind: [path for _, path in sorted(pairs)] for kind, pairs in found.items()}


def make_subset(files, per_class, root):
    """root/train/ with symlinks to the first `per_class` cats and dogs."""
    train = os.path.join(root, "train")
    os.makedirs(train)
    for kind in ("cat", "dog"):
        for path in files[kind][:per_class]:
            os.symlink(os.path.abspath(path), os.path.join(train, os.path.basename(path)))
    return root


def warm_cache(paths):
    started = time.perf_counter()
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += len(f.read())
    return time.perf_counter() - started, total


# --- the three ways of decoding -----------------------------------------------

def _decode_chunk(job):
    """Decode and resize every path, keep nothing; the decode floor's work."""
    from PIL import Image

    paths, ours = job
    if ours:
        from shards.image import _draft_request
    height, width = SIZE
    for path in paths:
        with Image.open(path) as im:
            request = _draft_request(im.size, SIZE, "stretch", False) if ours else (width, height)
            im.draft("RGB", request)
            im.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return len(paths)


def decode_floor(paths, ours_draft, workers, chunk=64):
    """Images/s of draft decode + resize in `workers` processes, nothing kept."""
    jobs = [(paths[i:i + chunk], ours_draft) for i in range(0, len(paths), chunk)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_decode_chunk, [([], ours_draft)] * workers))  # start the workers first
        started = time.perf_counter()
        done = sum(pool.map(_decode_chunk, jobs))
        seconds = time.perf_counter() - started
    return {"images": done, "seconds": seconds}


def tutorial_loop(list_file):
    """The tutorial's way, run in its own process: prints JSON to stdout."""
    import numpy as np
    from PIL import Image

    with open(list_file) as f:
        paths = f.read().split("\n")
    height, width = SIZE
    started = time.perf_counter()
    pictures = []
    for path in paths:
        with Image.open(path) as im:
            pictures.append(np.asarray(im.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)))
    data = np.array(pictures)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "shape": list(data.shape), "dtype": str(data.dtype)}))


def run_tutorial(paths, tmp):
    list_file = os.path.join(tmp, "tutorial-files.txt")
    with open(list_file, "w") as f:
        f.write("\n".join(paths))
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_ingest; bench_ingest.tutorial_loop({list_file!r})")
    result = run_measured([sys.executable, "-c", code])
    inner = json.loads(result["stdout"])
    result.update(inner, images=inner["shape"][0])
    return result


def run_ours(input_path, out):
    result = run_measured([sys.executable, "cli.py", "-q", "ingest", input_path, "--out", out, "--force"])
    with open(os.path.join(out, "manifest.json")) as f:
        result["images"] = json.load(f)["totals"]["images"]
    shutil.rmtree(out)
    return result


# --- report -------------------------------------------------------------------

def _row(what, images, seconds, other, peak=None, single=None, procs=None):
    rate = images / seconds if seconds else 0
    cells = [f"{what:<46}", f"{images:>7,}", f"{seconds:>8.2f}", f"{rate:>8,.0f}",
             f"{peak / MB:>9,.0f}" if peak else f"{'-':>9}",
             f"{single / MB:>9,.0f}" if single else f"{'-':>9}",
             f"{procs:>6}" if procs else f"{'-':>6}", f"{other:>6.2f}"]
    return " | ".join(cells)


def _verdict(ok):
    return "met" if ok else "NOT met"


def report(rows, floor_default, floor_ours, small, full, tutorial, workers):
    header = " | ".join([f"{'what':<46}", f"{'images':>7}", f"{'seconds':>8}", f"{'img/s':>8}",
                         f"{'tree MB':>9}", f"{'max1 MB':>9}", f"{'procs':>6}", f"{'other':>6}"])
    lines = [header, "-" * len(header)] + rows
    rate = lambda r: r["images"] / r["seconds"]  # noqa: E731
    ratio_default = rate(full) / rate(floor_default)
    ratio_ours = rate(full) / rate(floor_ours)
    flat = full["peak_tree"] / small["peak_tree"] - 1
    full_n, small_n = f"{full['images']:,}", f"{small['images']:,}"
    lines += [
        "",
        "tree MB: peak of the summed RSS of the process and all its descendants (sampled every "
        f"{SAMPLE_SECONDS * 1000:.0f} ms; shared library pages count once per process).",
        "max1 MB: ru_maxrss from wait4 (RUSAGE_CHILDREN of that run): the largest single process.",
        "other: cores kept busy by processes outside this benchmark during the line (machine-wide CPU time, psutil);",
        f"  above {NOISY_CORES} the line competed with another job: run again on a quiet machine.",
        "Ours is timed as the whole subprocess (interpreter start, planning, hashing, decoding, writing,",
        "sha256 of the shards, manifest); the tutorial line times only its loop, in its own process.",
        f"Floors use {workers} processes (one per core); ours starts one worker per core (dask.system.CPU_COUNT).",
        "Our loader asks libjpeg for a smaller draft scale than Pillow's default (shards.image._draft_request:",
        "1/4 instead of 1/2 for 500x374 -> 125x94), so the fair floor for us is the second floor line;",
        "the target is stated against the first.",
        "",
        f"ours ({full_n}) / floor with Pillow's default draft: {ratio_default:.2f}  "
        f"(target >= {TARGET_RATIO}: {_verdict(ratio_default >= TARGET_RATIO)})",
        f"ours ({full_n}) / floor with our draft request:      {ratio_ours:.2f}",
        f"ours ({small_n}) / floor with Pillow's default draft: {rate(small) / rate(floor_default):.2f}"
        " (fixed start-up cost weighs more on fewer images)",
        f"peak tree RSS at {full['images']:,}: {full['peak_tree'] / MB:,.0f} MB  "
        f"(target <= {TARGET_PEAK_MB} MB: {_verdict(full['peak_tree'] / MB <= TARGET_PEAK_MB)})",
        f"peak tree RSS {full['images']:,} vs {small['images']:,}: {flat:+.1%}  "
        f"(target within {TARGET_FLATNESS:.0%}: {_verdict(abs(flat) <= TARGET_FLATNESS)})",
        f"ours ({full_n}) / tutorial loop: {rate(full) / rate(tutorial):.1f}x the speed; tutorial peak "
        f"{tutorial['peak_tree'] / MB:,.0f} MB for {tutorial['images']:,} images "
        f"({tutorial['dtype']} array {tuple(tutorial['shape'])})",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="Kaggle-shaped folder at original resolution (holding train/).")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="Processes for the decode floor (default: every core).")
    args = parser.parse_args(argv)

    if not os.path.isdir(args.input):
        say(missing_input(args.input))
        return 2
    files = kaggle_files(image_folder(args.input))
    if min(len(files["cat"]), len(files["dog"])) < SUBSET_PER_CLASS:
        say(f"{args.input} holds {len(files['cat'])} cats and {len(files['dog'])} dogs; this benchmark "
            f"needs at least {SUBSET_PER_CLASS} of each. Build it with:\n"
            f"    python3 {MAKE_TOOL} {args.input} --per-class 12500")
        return 2
    every = files["cat"] + files["dog"]
    subset_paths = files["cat"][:SUBSET_PER_CLASS] + files["dog"][:SUBSET_PER_CLASS]

    tmp = tempfile.mkdtemp(prefix="kibble-bench-ingest-", dir="/tmp")
    try:
        say(f"reading {len(every):,} files once to warm the page cache ...")
        with OtherLoad() as load:
            warm_seconds, warm_bytes = warm_cache(every)
        rows = [_row(f"warm page cache ({warm_bytes / MB:,.0f} MB read)", len(every), warm_seconds, load.cores)]
        noisy = []

        def note(load, what):
            if load.cores > NOISY_CORES:
                noisy.append(f"{what} ({load.cores:.2f} cores busy elsewhere)")

        say("decode floor, Pillow's default draft ...")
        with OtherLoad() as load:
            floor_default = decode_floor(every, False, args.workers)
        rows.append(_row("decode floor, Pillow default draft", floor_default["images"],
                         floor_default["seconds"], load.cores))
        note(load, "decode floor, Pillow default draft")
        say("decode floor, our draft request ...")
        with OtherLoad() as load:
            floor_ours = decode_floor(every, True, args.workers)
        rows.append(_row("decode floor, our draft request", floor_ours["images"], floor_ours["seconds"],
                         load.cores))
        note(load, "decode floor, our draft request")

        subset = make_subset(files, SUBSET_PER_CLASS, os.path.join(tmp, "subset"))
        say(f"ours on the {2 * SUBSET_PER_CLASS:,}-image subset ...")
        with OtherLoad() as load:
            small = run_ours(subset, os.path.join(tmp, "shards-5k"))
        rows.append(_row(f"ours: cli.py ingest, {small['images']:,} subset", small["images"], small["seconds"],
                         load.cores, small["peak_tree"], small["ru_maxrss"], small["processes"]))
        note(load, "ours, subset")
        say(f"ours on all {len(every):,} images ...")
        with OtherLoad() as load:
            full = run_ours(args.input, os.path.join(tmp, "shards-full"))
        rows.append(_row(f"ours: cli.py ingest, all {full['images']:,}", full["images"], full["seconds"],
                         load.cores, full["peak_tree"], full["ru_maxrss"], full["processes"]))
        note(load, "ours, all")

        say(f"the tutorial's PIL loop on {len(subset_paths):,} images ...")
        with OtherLoad() as load:
            tutorial = run_tutorial(subset_paths, tmp)
        rows.append(_row("tutorial: PIL loop, no draft, list -> np.array", tutorial["images"],
                         tutorial["seconds"], load.cores, tutorial["peak_tree"], tutorial["ru_maxrss"],
                         tutorial["processes"]))
        note(load, "tutorial loop")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"kibble ingest benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, input {args.input}")
    print(report(rows, floor_default, floor_ours, small, full, tutorial, args.workers))
    if noisy:
        print("\nWARNING: other jobs used the CPU during: " + "; ".join(noisy)
              + ". These figures are not trustworthy; run again when the machine is quiet.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
