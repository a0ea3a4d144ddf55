"""Shard compression benchmark: none, lzf and gzip side by side.

    python benchmarks/bench_compression.py [INPUT] [--images 4000]

INPUT (default: the real sample, ../shared/datasets/kaggle-sample) is any
folder `ingest` accepts; with --images N only the first N/2 cats and N/2
dogs are used (through a folder of symlinks). For each compression the same
files are ingested with `python cli.py -q ingest ... --compression C` and we
measure:

* write time: the wall time of that ingest (decoding included, so the
  difference between lines is the cost of the filter);
* bytes on disk: the shards (manifest excluded) and bytes per image;
* sequential read: every shard read whole, in blocks of 256 images with
  shards.ShardReader.read; each set is read twice and the second pass, from
  a warm page cache, is reported (page-cache dropping needs root). With a
  warm cache this measures decompression, the cost that stays when the
  shards fit in memory; a cold read from a slow disk favours the smaller
  files.

The table goes to stdout, progress to stderr. Not a test.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench_ingest import NOISY_CORES, OtherLoad  # noqa: E402  (the script's folder is on sys.path)
from benchmarks.measure import missing_input  # noqa: E402
from shards import ShardReader, load_manifest  # noqa: E402

SAMPLE = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets", "kaggle-sample"))
COMPRESSIONS = ("none", "lzf", "gzip")
BLOCK = 256
MB = 1e6
_NAME = re.compile(r"^(cat|dog)\.(\d+)\.jpe?g$", re.IGNORECASE)


def say(message):
    print(message, file=sys.stderr, flush=True)


def subset(input_path, images, root):
    """root/train/ with symlinks to the first images/2 cats and dogs of input_path."""
    folder = os.path.join(input_path, "train") if os.path.isdir(os.path.join(input_path, "train")) else input_path
    found = {"cat": [], "dog": []}
    for name in os.listdir(folder):
        match = _NAME.match(name)
        if match:
            found[match.group(1).lower()].append((int(match.group(2)), name))
    train = os.path.join(root, "train")
    os.makedirs(train)
    for kind in found:
        for _, name in sorted(found[kind])[:images // 2]:
            os.symlink(os.path.abspath(os.path.join(folder, name)), os.path.join(train, name))
    return root


def ingest(input_path, out, compression):
    cmd = [sys.executable, "cli.py", "-q", "ingest", input_path, "--out", out, "--force",
           "--compression", compression]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ingest failed ({' '.join(cmd)}):\n{done.stderr}")
    return seconds


def read_all(folder):
    """Images/s of reading every shard whole, BLOCK images per read call."""
    manifest = load_manifest(folder)
    images = 0
    started = time.perf_counter()
    for entry in manifest.shards():
        with ShardReader(manifest.shard_path(entry)) as shard:
            for start in range(0, shard.count, BLOCK):
                images += len(shard.read(start, min(start + BLOCK, shard.count)))
    return images, time.perf_counter() - started


def measure(input_path, out, compression):
    say(f"ingest --compression {compression} ...")
    with OtherLoad() as load:
        write_seconds = ingest(input_path, out, compression)
        with open(os.path.join(out, "manifest.json")) as f:
            totals = json.load(f)["totals"]
        read_all(out)  # first pass: fills the page cache
        images, read_seconds = read_all(out)
    shutil.rmtree(out)
    return {"compression": compression, "images": images, "write_s": write_seconds,
            "bytes": totals["bytes"], "read_s": read_seconds, "other": load.cores}


def report(results):
    header = (f"{'compression':<11} | {'images':>6} | {'write s':>7} | {'write img/s':>11} | "
              f"{'MB on disk':>10} | {'KB/img':>6} | {'vs none':>7} | {'read img/s (warm)':>17} | {'other':>5}")
    base = next(r for r in results if r["compression"] == "none")["bytes"]
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['compression']:<11} | {r['images']:>6,} | {r['write_s']:>7.2f} | "
            f"{r['images'] / r['write_s']:>11,.0f} | {r['bytes'] / MB:>10,.1f} | "
            f"{r['bytes'] / r['images'] / 1e3:>6.1f} | {r['bytes'] / base:>7.2f} | "
            f"{r['images'] / r['read_s']:>17,.0f} | {r['other']:>5.2f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", default=SAMPLE, help=f"Image folder (default: {SAMPLE}).")
    parser.add_argument("--images", type=int, default=None,
                        help="Use only the first N/2 cats and N/2 dogs (default: every image).")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.input):
        say(missing_input(args.input, f"Pass an image folder, e.g. {SAMPLE}, or: "))
        return 2

    tmp = tempfile.mkdtemp(prefix="kibble-bench-compression-", dir="/tmp")
    try:
        source = subset(args.input, args.images, os.path.join(tmp, "input")) if args.images else args.input
        results = [measure(source, os.path.join(tmp, f"shards-{c}"), c) for c in COMPRESSIONS]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"kibble shard compression, {time.strftime('%Y-%m-%d %H:%M')}, input {args.input}"
          + (f" (first {args.images // 2} cats + {args.images // 2} dogs)" if args.images else ""))
    print(report(results))
    print(f"read: every shard whole, {BLOCK} images per ShardReader.read; second of two passes (warm page cache).")
    print("other: cores kept busy by processes outside this benchmark during the line (machine-wide CPU time, psutil).")
    noisy = [r["compression"] for r in results if r["other"] > NOISY_CORES]
    if noisy:
        print(f"WARNING: other jobs used the CPU during: {', '.join(noisy)}; run again when the machine is quiet.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
