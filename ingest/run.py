"""`ingest`: a folder or zip of images in, verified HDF5 shards and a manifest out."""
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time

from ingest.plan import (
    IngestSettings,
    apply_exclusions,
    class_order,
    drop_duplicates,
    hash_items,
    index_classes,
    read_exclusions,
    shard_specs,
    split_items,
    zip_member_limit,
)
from ingest.sources import discover
from ingest.worker import build_shard_or_disk_error, crash_point
from shards.errors import UserError
from shards.fsio import DISK_ERRORS, FolderLock, atomic_path, disk_error_message, remove_temp_files
from shards.manifest import MANIFEST_NAME, SPLITS, load_manifest, verify_shards
from shards.progress import Progress

_SHARD_FILE = re.compile(r"^(train|val|test|unlabeled)-\d{5}\.h5$")
_TEMP_FILE = re.compile(r"^\..+\.tmp-\d+$")
LOCAL_SCHEDULERS = ("processes", "threads", "sync")
# Beyond its pixels, what one image costs in a shard (its name, its label,
# HDF5's bookkeeping), and what one shard file costs (about 16 KB measured);
# generous on purpose.
_IMAGE_OVERHEAD_BYTES = 256
_SHARD_OVERHEAD_BYTES = 64 << 10
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_SECONDS = 0.5


def _run_tasks(specs, run_one, scheduler, workers, on_done):
    """Run `run_one(spec)` for every spec through Dask; call on_done(summary).

    The graph is a bag over the (small) list of shard specs, one per
    partition. `scheduler` is "processes", "threads", "sync" or the address
    of a dask.distributed scheduler.
    """
    import dask
    import dask.bag as db

    if not specs:
        return
    bag = db.from_sequence(specs, npartitions=len(specs)).map(run_one)
    parts = bag.to_delayed()
    if scheduler in LOCAL_SCHEDULERS:
        from dask.callbacks import Callback

        class _Report(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if isinstance(result, list) and result and isinstance(result[0], dict) and "sha256" in result[0]:
                    for summary in result:
                        on_done(summary)

        with _Report(), _local_pool(scheduler, workers, len(specs)) as pool:
            options = {"pool": pool} if pool is not None else {}
            # chunksize=1: hand out one shard at a time, so both the progress bar
            # and the load balance across workers stay even.
            dask.compute(*parts, scheduler=scheduler, chunksize=1, **options)
        return
    from distributed import Client, as_completed

    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"cannot reach Dask scheduler at {scheduler!r}: {exc}") from None
    try:
        futures = client.compute(parts)
        for future in as_completed(futures):
            for summary in future.result():
                on_done(summary)
    finally:
        client.close()


@contextlib.contextmanager
def _local_pool(scheduler, workers, tasks):
    """The pool running the tasks of a local scheduler (None for "sync").

    Ours rather than Dask's, so that no more workers start than there are
    shards, so that every task has stopped (none still writing a shard) when
    `ingest` returns or raises, and so that worker processes end with this
    process even when it is killed with SIGKILL (see `_end_with_parent`).
    Forked workers start with the driver's modules already imported;
    spawned ones spend about a second importing NumPy, h5py and Pillow.
    """
    if scheduler == "sync":
        yield None
        return
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from dask.system import CPU_COUNT

    count = max(1, min(workers or CPU_COUNT, tasks))
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
        yield pool
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


def _prepare_out(out, plan_digest, force):
    """Return the existing manifest if `out` already holds this very ingest."""
    manifest_path = os.path.join(out, MANIFEST_NAME)
    if os.path.exists(manifest_path) and not force:
        manifest = load_manifest(out)
        if manifest.data.get("plan") != plan_digest:
            raise UserError(
                f"{out} already holds shards from a different ingest (other files or settings); "
                "pass --force to replace them or choose another --out")
        problems = verify_shards(manifest)
        if not problems:
            return manifest
        # Damaged or missing shards: delete the damaged ones (their metadata
        # may still look right) and fall through to rebuild what is missing.
        for problem in problems:
            # Deleted only when surely ours: a shard name right in `out`, a file or
            # a link (whose target survives). load_manifest refused paths leading
            # out of `out`; checked again here because a deletion is for good.
            path = problem.path
            if (os.path.normpath(os.path.dirname(path)) != os.path.normpath(out)
                    or not _SHARD_FILE.match(os.path.basename(path))):
                raise UserError(f"refusing to delete {path}: not a shard file in {out}")
            if os.path.islink(path) or os.path.isfile(path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
    os.makedirs(out, exist_ok=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # the folder is incomplete until a new one is written
    for name in os.listdir(out):
        if _TEMP_FILE.match(name) or (force and _SHARD_FILE.match(name)):
            os.remove(os.path.join(out, name))
    return None


def ingest(input_path, out, settings=IngestSettings(), *, scheduler="processes", workers=None,
           exclude=None, strict=False, force=False, progress=True):
    """Stream every image of `input_path` into shuffled shards in `out`.

    Returns the summary dict that is also written as the manifest, with an
    extra key "unchanged" (True when `out` already held this exact ingest).
    Raises UserError for input the user must fix, for an `out` that another
    ingest is writing, too small a disk or a write the disk refuses; no
    temporary file is left behind then.
    """
    settings.validate()
    started = time.monotonic()
    source = discover(input_path)
    classes, items, class_excluded = index_classes(source.items, source.class_names, settings.classes)
    items, excluded = apply_exclusions(items, read_exclusions(exclude))
    excluded += class_excluded
    hashes, unreadable = hash_items(source, items, zip_member_limit(settings.max_pixels))
    items, duplicates, conflicts = drop_duplicates(items, hashes, settings.label_conflicts)
    skipped = source.skipped + unreadable
    if strict and skipped:
        raise UserError(f"--strict: {len(skipped)} file(s) cannot be used, first: "
                        f"{skipped[0]['name']}: {skipped[0]['reason']}")
    splits, warnings = split_items(items, settings, classes)
    specs = shard_specs(splits, settings, classes)
    plan = _plan_digest(specs, settings)
    facts = {"classes": classes, "warnings": warnings}
    _check_free_space(out, specs, settings)
    try:
        with FolderLock(out, "shard folder"):
            return _ingest_locked(source, out, settings, plan, specs, scheduler, workers, strict, force,
                                  progress, started, skipped, excluded, duplicates, conflicts, facts)
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        error = UserError(disk_error_message(exc if exc.filename else OSError(exc.errno, exc.strerror, out)))
        # When HDF5 failed in this very process (sync and threads schedulers;
        # a worker process's failure stays in that process): see cli.py.
        error.hdf5_unusable = scheduler in ("sync", "threads") and getattr(exc, "hdf5_unusable", False)
        raise error from None


def _ingest_locked(source, out, settings, plan, specs, scheduler, workers, strict, force, progress, started,
                   skipped, excluded, duplicates, conflicts, facts):
    """The part of `ingest` that writes `out`, run while holding its lock."""
    remove_temp_files(out)  # left by a killed ingest: the lock proves nobody is writing them
    existing = _prepare_out(out, plan, force)
    if existing is not None:
        return {**existing.data, "unchanged": True}

    total = sum(len(spec.items) for spec in specs)
    bar = Progress(total, "ingest", enabled=progress)
    planned = {spec.file: len(spec.items) for spec in specs}
    finished = {}

    def done(summary):  # a local scheduler may report one result twice
        if summary["file"] not in finished:
            finished[summary["file"]] = summary
            bar.update(planned[summary["file"]])

    run_one = _ShardJob(source.path, source.kind, settings, os.path.abspath(out))
    try:
        _run_tasks(specs, run_one, scheduler, workers, done)
    except BaseException:
        # Every local task has stopped by now (see `_local_pool`); a shard temp
        # file of one that failed or was killed would otherwise stay until the
        # next run.
        if scheduler in LOCAL_SCHEDULERS:
            remove_temp_files(out)
        raise
    bar.close()

    summaries = sorted(finished.values(), key=lambda s: (SPLITS.index(s["split"]), s["index"]))
    decode_skipped = [entry for s in summaries for entry in s.pop("skipped")]
    if strict and decode_skipped:
        raise UserError(f"--strict: {len(decode_skipped)} image(s) could not be decoded, first: "
                        f"{decode_skipped[0]['name']}: {decode_skipped[0]['reason']}")
    manifest = _manifest(source, settings, plan, summaries, skipped + decode_skipped,
                         excluded, duplicates, conflicts, facts)
    _write_manifest(os.path.join(out, MANIFEST_NAME), manifest)
    reused = sum(1 for s in summaries if s["reused"])
    return {**manifest, "unchanged": False, "reused_shards": reused,
            "seconds": round(time.monotonic() - started, 2)}


def _write_manifest(path, manifest):
    """Write the manifest atomically: the last step, which makes the folder complete."""
    crash_point("manifest-before")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
        crash_point("manifest-temp-written")
    crash_point("manifest-renamed")


def estimated_bytes(specs, settings):
    """A generous estimate of the shards' total size, uncompressed.

    HDF5 allocates whole chunks of CHUNK_ROWS images, so a shard's last,
    partly filled chunk takes its full size on disk.
    """
    from shards.format import CHUNK_ROWS

    height, width = settings.size
    total = 0
    for spec in specs:
        count = len(spec.items)
        rows = max(1, min(CHUNK_ROWS, count))
        stored = -(-count // rows) * rows
        total += stored * height * width * 3 + count * _IMAGE_OVERHEAD_BYTES + _SHARD_OVERHEAD_BYTES
    return total


def _check_free_space(out, specs, settings):
    """Refuse to start an ingest that cannot fit on the disk of `out`.

    Shards already in `out` under a planned name are kept or replaced, so
    their bytes count as available. Compressed shards are not checked: how
    well images compress cannot be known before they are decoded; a disk
    that fills up then still ends in a one-line error and no temp files.
    """
    if settings.compression != "none":
        return
    need = estimated_bytes(specs, settings)
    for spec in specs:
        with contextlib.suppress(OSError):
            need -= os.stat(os.path.join(out, spec.file)).st_size
    folder = os.path.abspath(out)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell; the writes themselves will say if the disk is full
    if need > free:
        images = sum(len(spec.items) for spec in specs)
        height, width = settings.size
        raise UserError(
            f"--out {out} needs about {_gigabytes(need)} for {images:,} images of {height}x{width}, "
            f"but only {_gigabytes(free)} is free there; free some space, choose a smaller --size, "
            "pass --compression lzf, or choose another --out")


def _gigabytes(n):
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


class _ShardJob:
    """Picklable callable for Dask: build one shard with fixed settings."""

    def __init__(self, source_path, source_kind, settings, out):
        self.args = (source_path, source_kind, settings, out)

    def __call__(self, spec):
        return build_shard_or_disk_error(spec, *self.args)


def _plan_digest(specs, settings):
    import hashlib
    import json

    blob = json.dumps([settings.to_json(), [spec.digest for spec in specs]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _manifest(source, settings, plan, summaries, skipped, excluded, duplicates, conflicts, facts):
    from shards.format import SCHEMA_VERSION

    classes = facts["classes"]
    splits = {}
    for split in SPLITS:
        mine = [s for s in summaries if s["split"] == split]
        if mine:
            splits[split] = {
                "count": sum(s["count"] for s in mine),
                "class_counts": [sum(counts) for counts in zip(*(s["class_counts"] for s in mine))],
                "shards": [s["file"] for s in mine],
            }
    shards = [{k: s[k] for k in ("file", "split", "index", "count", "class_counts", "sha256", "bytes")}
              for s in summaries]
    return {
        "schema_version": SCHEMA_VERSION,
        "plan": plan,
        "settings": settings.to_json(),
        "source": {"path": source.path, "kind": source.kind, "layout": source.layout,
                   "files_found": len(source.items) + len(source.skipped)},
        # Class names in index order: label i in every shard is classes[i].
        "classes": classes,
        # Classes of the input left out by --classes (their images are in "excluded").
        "excluded_classes": sorted(name for name in class_order(source.class_names)[1] if name not in classes),
        # Classes too small for their share of validation or test, with their counts.
        "warnings": facts["warnings"],
        "splits": splits,
        "shards": shards,
        "skipped": sorted(skipped, key=lambda s: s["name"]),
        "excluded": sorted(excluded, key=lambda s: s["name"]),
        "duplicates": duplicates,
        # Identical files under different labels: {"names", "labels", "kept"}.
        "label_conflicts": conflicts,
        "totals": {
            "images": sum(s["count"] for s in summaries),
            "shards": len(summaries),
            "bytes": sum(s["bytes"] for s in summaries),
            "skipped": len(skipped),
            "excluded": len(excluded),
            "duplicates": len(duplicates),
            "label_conflicts": len(conflicts),
        },
    }

