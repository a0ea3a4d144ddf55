"""Measuring tools shared by the benchmarks: peak memory of a process tree,
a command run under that measurement, and the load other jobs put on the
machine meanwhile."""
import os
import resource
import subprocess
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_SECONDS = 0.05
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- memory of a process tree -------------------------------------------------

def _ppid_and_rss(pid):
    """(parent pid, RSS bytes) of one process, or None if it has gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
    # The command name (field 2) may hold spaces or parentheses: split after it.
    ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
    return ppid, resident_pages * PAGE


def tree_rss(root):
    """(summed RSS in bytes, process count) of `root` and all its descendants."""
    info = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _ppid_and_rss(int(entry))
            if found is not None:
                info[int(entry)] = found
    children = {}
    for pid, (ppid, _) in info.items():
        children.setdefault(ppid, []).append(pid)
    total, count, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        if pid in info:
            total += info[pid][1]
            count += 1
        todo.extend(children.get(pid, ()))
    return total, count


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
            "samples": sampler.samples, "ru_maxrss": usage.ru_maxrss * 1024, "stdout": stdout}


# --- other load on the machine ------------------------------------------------

def _busy_seconds():
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds():
    """CPU seconds of this process and every child it has reaped."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


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
