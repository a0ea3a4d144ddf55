"""How cost grows: ingest 25,000 and 250,000 images, per image (issue 12 item 8).

    python benchmarks/bench_scale.py [--root /tmp/kibble-bench-scale] [--counts 25000,250000]

The images are generated, every one different: 10 class folders of 96x72
JPEGs, each a random 8x8 colour grid blown up (so no two are exact copies
and next to none are near-duplicates, as in a real set; repeating one
folder through links would make copies that ingest rightly drops). They are
made once under ROOT and reused.

Each count is ingested once (`python cli.py -q ingest ... --scheduler
processes`, a subprocess, 32x32 shards of 1,000 images) from a warm page
cache. Measured: wall seconds and milliseconds per image (wall and CPU of the
whole process tree), the peak RSS of the
driver process alone and of the whole process tree (psutil, every 50 ms),
the tree's peak PSS (every 0.5 s; forked workers' shared pages counted once),
manifest.json's size and the time to load it (shards.manifest.load_manifest,
best of 5), and the cores other jobs kept busy meanwhile. The table goes to
stdout (and JSON with --json); progress to stderr. Not a test.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.measure import SAMPLE_SECONDS, OtherLoad, tree_rss  # noqa: E402

CLASSES = 10
IMAGE_SIZE = (96, 72)
SHARD_SIZE = 1000
STORED = "32x32"
MB = 1e6


def say(message):
    print(message, file=sys.stderr, flush=True)


# --- the input ----------------------------------------------------------------

def _write_images(args):
    folder, start, stop = args
    import numpy as np
    from PIL import Image

    for n in range(start, stop):
        grid = np.random.default_rng(n).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(grid).resize(IMAGE_SIZE, Image.BILINEAR)
        image.save(os.path.join(folder, f"class{n % CLASSES}", f"img{n:07d}.jpg"), quality=90)
    return stop - start


def make_images(folder, count):
    """`count` distinct generated JPEGs in class folders under `folder`; made once (a hidden marker says so)."""
    marker = os.path.join(folder, f".complete-{count}")
    if os.path.exists(marker):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for k in range(CLASSES):
        os.makedirs(os.path.join(folder, f"class{k}"))
    started = time.perf_counter()
    step = 5000
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        done = 0
        for made in pool.map(_write_images, [(folder, s, min(s + step, count)) for s in range(0, count, step)]):
            done += made
            say(f"  generated {done:,}/{count:,} images")
    open(marker, "w").close()
    say(f"  {count:,} images in {time.perf_counter() - started:.0f} s")
    return folder


def warm(folder):
    """Read every file once, so each run starts from the page cache."""
    for base, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(base, name), "rb") as f:
                f.read()


# --- one measured ingest ----------------------------------------------------------

# PSS reads every mapping of every process (/proc/PID/smaps): sampled less often.
PSS_SECONDS = 0.5


def tree_pss(root):
    """Summed PSS of `root` and its descendants: a page shared by n processes counts 1/n in each.

    Forked workers share the driver's pages copy-on-write; their RSS counts
    those pages again in every process, their PSS once in all.
    """
    total = 0
    try:
        top = psutil.Process(root)
        members = [top] + top.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for process in members:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            pass
    return total


class _Peaks(threading.Thread):
    """Peak RSS of one process, and peak RSS and PSS of its whole tree, sampled every SAMPLE_SECONDS."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.driver, self.tree, self.tree_pss = pid, 0, 0, 0
        self._done = threading.Event()

    def run(self):
        process = psutil.Process(self.pid)
        last_pss = 0.0
        while not self._done.is_set():
            try:
                self.driver = max(self.driver, process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            self.tree = max(self.tree, tree_rss(self.pid)[0])
            if time.monotonic() - last_pss >= PSS_SECONDS:
                self.tree_pss = max(self.tree_pss, tree_pss(self.pid))
                last_pss = time.monotonic()
            self._done.wait(SAMPLE_SECONDS)

    def stop(self):
        self._done.set()
        self.join()


def ingest_once(folder, out, count):
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "cli.py", "-q", "ingest", folder, "--out", out, "--size", STORED,
               "--shard-size", str(SHARD_SIZE), "--scheduler", "processes"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with OtherLoad() as other:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peaks = _Peaks(proc.pid)
        peaks.start()
        _, stderr = proc.communicate()
        seconds = time.perf_counter() - started
        peaks.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The driver reaps its workers, so this is the CPU of the whole tree.
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed ({proc.returncode}): {stderr[-2000:]}")
    manifest_path = os.path.join(out, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    return {"images": count, "stored": manifest["totals"]["images"], "seconds": round(seconds, 1),
            "ms_per_image": round(seconds / count * 1000, 3), "cpu_ms_per_image": round(cpu / count * 1000, 3),
            "driver_peak_mb": round(peaks.driver / MB, 1), "tree_peak_mb": round(peaks.tree / MB),
            "tree_pss_peak_mb": round(peaks.tree_pss / MB),
            "manifest_kb": round(os.path.getsize(manifest_path) / 1e3, 1),
            "manifest_load_ms": round(_load_ms(out), 1), "shard_mb": round(_shard_bytes(out) / MB),
            "other_cores": round(other.cores, 2)}


def _load_ms(out):
    """Best of 5 of load_manifest in a fresh interpreter (the cost a train or verify command pays)."""
    code = ("import sys, time\nsys.path.insert(0, sys.argv[1])\nfrom shards.manifest import load_manifest\n"
            "times = []\nfor _ in range(5):\n    t = time.perf_counter()\n    load_manifest(sys.argv[2])\n"
            "    times.append(time.perf_counter() - t)\nprint(min(times) * 1000)")
    return float(subprocess.run([sys.executable, "-c", code, REPO, out], capture_output=True, text=True,
                                check=True).stdout)


def _shard_bytes(out):
    return sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out) if n.endswith(".h5"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join("/tmp", "kibble-bench-scale"))
    parser.add_argument("--counts", default="25000,250000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        folder = os.path.join(args.root, f"images-{count}")
        say(f"{count:,} images: generating (once) ...")
        make_images(folder, count)
        warm(folder)
        say(f"{count:,} images: ingesting ...")
        rows.append(ingest_once(folder, os.path.join(args.root, f"shards-{count}"), count))
        say(f"  {rows[-1]}")
        shutil.rmtree(os.path.join(args.root, f"shards-{count}"), ignore_errors=True)
    header = ("images", "seconds", "ms_per_image", "cpu_ms_per_image", "driver_peak_mb", "tree_peak_mb",
              "tree_pss_peak_mb", "manifest_kb", "manifest_load_ms", "shard_mb", "other_cores")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{row[k]:,}" if isinstance(row[k], int) else str(row[k]) for k in header) + " |")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print(f"\nper image, {last['images']:,} against {first['images']:,}: "
              f"{last['ms_per_image'] / first['ms_per_image'] - 1:+.1%}; driver peak "
              f"{last['driver_peak_mb'] / first['driver_peak_mb'] - 1:+.1%}; tree peak "
              f"{last['tree_peak_mb'] / first['tree_peak_mb'] - 1:+.1%}")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
