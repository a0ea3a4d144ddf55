"""Where the shard tasks run: in this thread, a local pool, or a dask.distributed cluster.

Every shard is an independent task (`ingest.worker.build_shard`), so this is
Dask's futures pattern: submit each task, collect each result as it
completes. Which executor runs them is the only difference between
schedulers.
"""
import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

from shards.errors import UserError

LOCAL_SCHEDULERS = ("processes", "threads", "sync")
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 0.5


def run_tasks(specs, job, scheduler, workers, on_done):
    """Run `job(spec)` for every spec; call `on_done(result)` in this thread as each one ends.

    `scheduler` is "sync" (one after the other, in this thread: for
    debugging, and what the crash tests use), "threads", "processes", or the
    address of a dask.distributed scheduler (tcp://host:8786).

    `specs` may be any iterable, a generator too: it is read as tasks are
    submitted, and only a few tasks per worker are waiting at any time, so
    the tasks' arguments (a scan chunk's names, a shard's rows) need not
    all be in memory at once.
    """
    # Why local runs do not go through a distributed LocalCluster too (one
    # code path, Dask's advice for independent tasks): it missed the budget
    # of 5% of the previous speed and memory. 25,000 Kaggle-like JPEGs to
    # 94x125, 2 cores, the variants run alternately on a quiet machine,
    # medians of 3 to 5 runs each (2026-11-25):
    #
    #   "processes" runs on                         wall s   img/s   peak tree MB   CPU s
    #   (before) dask.bag over this fork pool         20.3   1,230            249   32-35
    #   LocalCluster, client.map + as_completed       24.0   1,040            296   41-43
    #   same, without its MALLOC_TRIM_THRESHOLD_      20.3   1,230            300   35-37
    #   this fork pool, submit + as_completed         18.0   1,386            199   28-32
    #
    # The cluster's scheduler lives in this process and each spawned worker
    # carries distributed's runtime: +20% memory however it is tuned. (Its
    # workers do end with a killed ingest, through distributed's own
    # parent-alive pipe; that was not the obstacle.) Driving the pool
    # directly, without dask.bag's graph in between, is also leaner: its
    # forked workers no longer inherit dask.bag and its imports.
    tasks = len(specs) if hasattr(specs, "__len__") else None
    specs = iter(specs)
    first = next(specs, None)
    if first is None:
        return
    specs = itertools.chain([first], specs)
    if scheduler == "sync":
        for spec in specs:
            on_done(job(spec))
    elif scheduler in LOCAL_SCHEDULERS:
        with _local_pool(scheduler, workers, tasks) as (pool, count):
            pending = set()
            for spec in itertools.chain(specs, [None]):
                if spec is not None:
                    pending.add(pool.submit(job, spec))
                # Enough waiting that no worker idles, few enough to hold little.
                while pending and (spec is None or len(pending) >= 2 * count + 2):
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        on_done(future.result())
    else:
        from distributed import as_completed

        with _distributed_client(scheduler) as client:
            window = max(8, 4 * sum(client.nthreads().values()))
            # pure=False: a task writes a file, so it must run even if an
            # identical one ran before on that scheduler.
            running = as_completed([client.submit(job, spec, pure=False)
                                    for spec in itertools.islice(specs, window)])
            for future in running:
                on_done(future.result())
                spec = next(specs, None)
                if spec is not None:
                    running.add(client.submit(job, spec, pure=False))


@contextlib.contextmanager
def _distributed_client(address):
    from distributed import Client

    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"cannot reach Dask scheduler at {address!r}: {exc}") from None
    with client:
        yield client


@contextlib.contextmanager
def _local_pool(scheduler, workers, tasks):
    """The pool running the tasks of the "processes" or "threads" scheduler.

    Ours rather than Dask's, so that no more workers start than there are
    shards, so that every task has stopped (none still writing a shard) when
    `ingest` returns or raises, and so that worker processes end with this
    process even when it is killed with SIGKILL (see `_end_with_parent`).
    Forked workers start with the driver's modules already imported;
    spawned ones spend about a second importing NumPy, h5py and Pillow.
    """
    from dask.system import CPU_COUNT

    count = max(1, min(workers or CPU_COUNT, tasks or CPU_COUNT))
    if scheduler == "threads":
        pool = ThreadPoolExecutor(count, thread_name_prefix="ingest")
    else:
        context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
        pool = ProcessPoolExecutor(count, mp_context=context, initializer=_end_with_parent,
                                   initargs=(os.getpid(),))
    try:
        # Start every worker process now, from this thread: the kernel's
        # parent-death signal fires when the thread that forked a worker
        # ends, and this one outlives the pool.
        pool.submit(int).result()
        yield pool, count
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _end_with_parent(parent_pid):
    """Pool initializer: end this worker as soon as the ingest that started it ends.

    On Linux the kernel does it (PR_SET_PDEATHSIG: SIGKILL when the parent
    dies, however it dies). Elsewhere a daemon thread polls the parent's
    pid. Either way a worker never outlives a killed ingest, asleep on a
    queue nobody will ever write to.
    """
    if not _parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="watch-parent").start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def _parent_death_signal(signum):
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid):
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)
