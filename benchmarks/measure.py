"""Measuring tools shared by the benchmarks: peak memory of a process tree,
a command run under that measurement, and the load other jobs put on the
machine meanwhile."""
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_SECONDS = 0.05
MAKE_TOOL = os.path.normpath(os.path.join(REPO, "..", "shared", "tools", "make_kaggle_like.py"))


def missing_input(path, other_choice=""):
    """What to tell the user when a benchmark's input folder does not exist."""
    build = "build" if other_choice else "Build"
    return (f"No folder at {path}. {other_choice}{build} the 25,000-image benchmark input (about 20 s) with:\n"
            f"    python3 {MAKE_TOOL} {path} --per-class 12500")


# --- memory of a process tree -------------------------------------------------

def tree_rss(root):
    """(summed RSS in bytes, process count) of `root` and all its descendants.

    psutil reads the same kernel figures as /proc on Linux and works on
    macOS and Windows too. Processes that end while we look are skipped.
    """
    try:
        top = psutil.Process(root)
        members = [top] + top.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    total, count = 0, 0
    for process in members:
        try:
            total += process.memory_info().rss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, count


def _maxrss_bytes(usage):
    # ru_maxrss is KiB on Linux but bytes on macOS.
    return usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024


class TreeSampler(threading.Thread):
    """Samples tree_rss(root) every SAMPLE_SECONDS until stop(); keeps the peak
    and, in `timeline`, every (seconds since start, bytes) sample."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root = root
        self.peak = 0
        self.most_processes = 0
        self.samples = 0
        self.timeline = []
        self._t0 = time.perf_counter()
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            total, count = tree_rss(self.root)
            self.peak = max(self.peak, total)
            self.most_processes = max(self.most_processes, count)
            self.samples += 1
            self.timeline.append((time.perf_counter() - self._t0, total))
            self._done.wait(SAMPLE_SECONDS)

    def stop(self):
        self._done.set()
        self.join()


def run_measured(cmd, cwd=REPO):
    """Run `cmd`; return wall seconds, tree RSS peak, ru_maxrss and its stdout.

    The child is reaped with os.wait4, whose rusage is RUSAGE_CHILDREN as
    seen from this one run: ru_maxrss is the largest single process of the
    tree (the child or any descendant it waited for), not a sum.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"command failed with exit code {proc.returncode}: {' '.join(cmd)}\n{stderr}")
    return {"seconds": seconds, "peak_tree": sampler.peak, "processes": sampler.most_processes,
            "samples": sampler.samples, "ru_maxrss": _maxrss_bytes(usage), "stdout": stdout}


# --- other load on the machine ------------------------------------------------

def _busy_seconds():
    """CPU seconds the whole machine has spent busy since boot."""
    times = psutil.cpu_times()
    # On Linux "guest" time is already inside "user", so add fields by name.
    busy = ("user", "nice", "system", "irq", "softirq", "steal", "interrupt", "dpc")
    return sum(getattr(times, name, 0.0) for name in busy)


def _own_seconds():
    """CPU seconds of this process and every child it has reaped."""
    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


class OtherLoad:
    """Context manager: cores kept busy by other processes during the block.

    Machine-wide busy time minus our own (this process and reaped children),
    divided by wall time. Clock ticks make it rough (about 0.05 core), but a
    value near 1 means another job took a core and the line is not trustworthy.
    """

    def __enter__(self):
        self.start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc):
        wall, busy, own = (now - then for now, then in
                           zip((time.perf_counter(), _busy_seconds(), _own_seconds()), self.start))
        self.cores = max(0.0, (busy - own) / wall) if wall else 0.0
