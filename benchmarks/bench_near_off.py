"""Ingest wall time with and without the near-duplicate scan, against the decode floor.

    python benchmarks/bench_near_off.py FOLDER [--count 5000] [--rounds 1]

FOLDER is a Kaggle-shaped train/ folder (cat.N.jpg, dog.N.jpg). The first
COUNT/2 cats and dogs are linked into a temporary folder; then, per round,
alternately: the decode floor (bench_ingest.decode_floor: draft decode and
resize to 94x125 on every core, nothing kept), `cli.py -q ingest` (default
--near-distance) and `cli.py -q ingest --near-distance off`, each to a
fresh --out, warm page cache. Prints images/s and the ratio to the floor
of the same round. Not a test.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.bench_ingest import decode_floor  # noqa: E402


def _linked(folder, count, into):
    names = [f"{kind}.{i}.jpg" for kind in ("cat", "dog") for i in range(count // 2)]
    for name in names:
        os.symlink(os.path.join(os.path.abspath(folder), name), os.path.join(into, name))
    return [os.path.join(into, name) for name in names]


def _ingest(src, out, extra):
    started = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(REPO, "cli.py"), "-q", "ingest", src, "--out", out,
                    "--force", *extra], check=True, cwd=REPO)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="kibble-near-off-")
    try:
        src = os.path.join(root, "train")
        os.makedirs(src)
        paths = _linked(args.folder, args.count, src)
        for path in paths:  # warm the page cache
            with open(path, "rb") as f:
                f.read()
        print("| round | floor img/s | default img/s (/ floor) | off img/s (/ floor) | off / default time |")
        print("|---:|---:|---:|---:|---:|")
        for round_ in range(1, args.rounds + 1):
            floor = decode_floor(paths, True, os.cpu_count())
            floor_rate = floor["images"] / floor["seconds"]
            default = _ingest(src, os.path.join(root, "default"), [])
            off = _ingest(src, os.path.join(root, "off"), ["--near-distance", "off"])
            n = len(paths)
            print(f"| {round_} | {floor_rate:,.0f} | {n / default:,.0f} ({n / default / floor_rate:.2f}) | "
                  f"{n / off:,.0f} ({n / off / floor_rate:.2f}) | {off / default:.2f} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
