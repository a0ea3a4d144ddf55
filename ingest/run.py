"""`ingest`: a folder or zip of images in, verified HDF5 shards and a manifest out."""
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ingest.plan import (
    IngestSettings,
    class_order,
    describe_near_duplicates,
    drop_duplicates,
    near_duplicate_groups,
    plan_items,
    plan_specs,
    read_exclusions,
    resolve_near_conflicts,
    split_rows,
    zip_member_limit,
)
from ingest.scan import ScanTable, chunks, scan_chunk
from ingest.fingerprint import BITS as FINGERPRINT_BITS
from ingest.fingerprint import KIND as FINGERPRINT_KIND
from ingest.sources import Source, discover
from ingest.tasks import LOCAL_SCHEDULERS, run_tasks
from ingest.worker import build_shard_or_disk_error
from shards import storage
from shards.errors import UserError
from shards.format import CHUNK_ROWS, SCHEMA_VERSION
from shards.fsio import (DISK_ERRORS, TEMP_FILE, FolderLock, atomic_path, crash_point, disk_error_message,
                         remove_temp_files)
from shards.manifest import MANIFEST_NAME, SPLITS, load_manifest, verify_shards
from shards.progress import Progress

_SHARD_FILE = re.compile(r"^(train|val|test|unlabeled)-\d{5}\.h5$")
# Beyond its pixels, what one image costs in a shard (its name, its label,
# HDF5's bookkeeping), and what one shard file costs (about 16 KB measured);
# generous on purpose.
_IMAGE_OVERHEAD_BYTES = 256
_SHARD_OVERHEAD_BYTES = 64 << 10


@dataclass(frozen=True)
class _Plan:
    """Everything `ingest` decides before it writes a byte."""

    source: Source
    settings: IngestSettings
    # One ShardSpec per shard file, in split order.
    specs: list
    # Of the settings and every shard's digest: names this very ingest.
    digest: str
    # Files found but unusable before any decoding: [{"name", "reason"}].
    skipped: list
    # Files left out by the exclude list or --classes: [{"name", "reason"}].
    excluded: list
    # Extra copies of a file: [{"name", "same_as"}].
    duplicates: list
    # Identical files under different labels: [{"names", "labels", "kept"}].
    conflicts: list
    # Class names in index order: label i in every shard is classes[i].
    classes: list
    # Classes too small for their share of validation or test, with their counts.
    warnings: list
    # Near-duplicate groups, as the manifest lists them (plan.describe_near_duplicates).
    near_duplicates: list
    # Near-duplicate groups under different labels: [{"names", "labels", "kept"}].
    near_conflicts: list
    # The images' sizes before resizing, as the manifest gives them (original_sizes).
    original_sizes: dict
    # Images found, labelled or not.
    images_found: int


def ingest(input_path, out, settings=IngestSettings(), *, scheduler="processes", workers=None,
           exclude=None, strict=False, force=False, progress=True, staging=None, labels=None,
           shared_disk=False):
    """Stream every image of `input_path` into shuffled shards in `out`.

    `out` may be a URL (s3://bucket/shards): the shards are built in the
    local folder `staging` (default: one under the system temp) and uploaded,
    manifest last (ingest.upload); the result then has an "upload" report.

    Returns the summary dict that is also written as the manifest, with an
    extra key "unchanged" (True when `out` already held this exact ingest).
    `labels` names a CSV giving each image's label (ingest.labels_file).

    `input_path` may be a URL too. With a dask.distributed `scheduler`, the
    workers may not see this machine's disk: INPUT and `out` must then be
    URLs (each worker builds, checks and uploads its own shards:
    ingest.cluster), unless `shared_disk` says every worker sees them at
    the same paths.
    Raises UserError for input or settings the user must fix, for an `out`
    that another ingest is writing, too small a disk or a write the disk
    refuses; no temporary file is left behind then.
    """
    distributed = scheduler not in LOCAL_SCHEDULERS
    if distributed and not shared_disk:
        _refuse_local_paths(input_path, out, scheduler)
    if storage.is_url(out) and distributed:
        import sys

        from ingest.cluster import ingest_on_cluster
        return ingest_on_cluster(sys.modules[__name__], input_path, out, settings, scheduler=scheduler,
                                 staging=staging, exclude=exclude, strict=strict, force=force,
                                 progress=progress, labels=labels)
    if storage.is_url(out):
        from ingest.upload import ingest_to_url
        return ingest_to_url(ingest, input_path, out, settings, staging=staging, scheduler=scheduler,
                             workers=workers, exclude=exclude, strict=strict, force=force, progress=progress,
                             labels=labels)
    out = storage.local_path(out)
    started = time.monotonic()
    settings.validate()
    plan = _plan(input_path, settings, exclude, strict, scheduler, workers, progress, labels)
    _check_free_space(out, plan.specs, settings)
    with _disk_errors_as_user_errors(out, scheduler), FolderLock(out, "shard folder"):
        remove_temp_files(out)  # left by a killed ingest: the lock proves nobody is writing them
        existing = _prepare_out(out, plan.digest, force)
        if existing is not None:
            return {**existing.data, "unchanged": True}
        summaries = _build_shards(plan, out, scheduler, workers, progress)
        decode_skipped = _decode_skips(summaries, strict)
        manifest = _manifest(plan, summaries, decode_skipped)
        _write_manifest(os.path.join(out, MANIFEST_NAME), manifest)
    reused = sum(1 for summary in summaries if summary["reused"])
    return {**manifest, "unchanged": False, "reused_shards": reused,
            "seconds": round(time.monotonic() - started, 2)}


def _refuse_local_paths(input_path, out, scheduler):
    """UserError for a local INPUT or --out with a cluster that may not see this machine's disk.

    A local --out would be written on each worker's own disk, and a local
    INPUT read from it: an output scattered over machines, or every file
    "not found". Refused rather than guessed.
    """
    for what, path in (("INPUT", input_path), ("--out", out)):
        path = storage.local_path(str(path))
        if not storage.is_url(path):
            raise UserError(
                f"{what} {path} is a path on this machine, but the workers of the Dask scheduler at "
                f"{scheduler} read and write on their own machines; give {what} as a URL every worker "
                "can reach (s3://bucket/..., gs://...), or pass --shared-disk if every worker sees "
                f"{path} at this very path (a network file system). Received: {what}={path}")


def _plan(input_path, settings, exclude, strict, scheduler="sync", workers=None, progress=False, labels=None):
    """Find the images, scan them, leave out exclusions and copies, split them and cut the splits into shards.

    Files are row numbers throughout, their names and scan records on local
    disk (ingest.catalogue, ingest.scan.ScanTable), so that the driver's
    memory does not grow with the number of files; what the plan keeps in
    the end is the shard specs, whose rows wait on disk too (plan.SpecStore).
    """
    source = discover(input_path, labels)
    images_found = source.item_count
    classes, items, excluded = plan_items(source, settings.classes, read_exclusions(exclude))
    source.found = None  # every file of the input: no longer needed
    excluded += source.excluded
    table = _scan(source, items, settings, scheduler, workers, progress)
    kept, duplicates, conflicts = drop_duplicates(items, table, settings.label_conflicts)
    skipped = source.skipped + table.skipped()
    if strict and skipped:
        raise UserError(f"--strict: {len(skipped)} file(s) cannot be used, first: "
                        f"{skipped[0]['name']}: {skipped[0]['reason']}")
    near_groups = near_duplicate_groups(items, table, kept, settings.near_distance)
    left_out, near_conflicts = resolve_near_conflicts(items, near_groups, classes, settings.label_conflicts)
    splits, warnings = split_rows(items.label, items.split, kept, settings, classes, near_groups, left_out)
    del kept
    specs = plan_specs(splits, items, table, settings, classes)
    near_duplicates = describe_near_duplicates(near_groups, splits, items, classes)
    crossing = sum(group["crosses_splits"] for group in near_duplicates)
    if crossing:
        warnings.append(f"{crossing} near-duplicate group(s) cross the train/val/test folders the input gives; "
                        "kept as given (listed in manifest.json 'near_duplicates'; --resplit keeps each group "
                        "in one split)")
    return _Plan(source, settings, specs, _plan_digest(specs, settings), skipped, excluded, duplicates,
                 conflicts, classes, warnings, near_duplicates, near_conflicts, original_sizes(table), images_found)


def _scan(source, items, settings, scheduler, workers, progress):
    """A ScanTable of every item (a FileList), filled by scan tasks on the workers (see ingest.scan)."""
    bar = Progress(len(items), "scan", enabled=progress)
    table = ScanTable(items.names)

    def done(chunk_columns):
        bar.update(table.fill(chunk_columns))

    job = functools.partial(scan_chunk, source_path=source.path, source_kind=source.kind,
                            max_member_bytes=zip_member_limit(settings.max_pixels), max_pixels=settings.max_pixels,
                            fingerprints=settings.near_distance is not None)
    run_tasks(chunks(items), job, scheduler, workers, done)
    bar.close()
    return table


def _plan_digest(specs, settings):
    blob = json.dumps([settings.to_json(), [spec.digest for spec in specs]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def _disk_errors_as_user_errors(out, scheduler):
    """Turn a write the disk refused (full, read-only, too large) into a one-line UserError."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        error = UserError(disk_error_message(exc if exc.filename else OSError(exc.errno, exc.strerror, out)))
        # When HDF5 failed in this very process (sync and threads schedulers;
        # a worker process's failure stays in that process), the command line
        # must end without HDF5's clean-up at exit, which would crash.
        error.hdf5_unusable = scheduler in ("sync", "threads") and getattr(exc, "hdf5_unusable", False)
        raise error from None


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
        if TEMP_FILE.match(name) or (force and _SHARD_FILE.match(name)):
            os.remove(os.path.join(out, name))
    return None


def _build_shards(plan, out, scheduler, workers, progress):
    """Write every planned shard (keeping identical ones); their summaries in manifest order."""
    bar = Progress(sum(len(spec.items) for spec in plan.specs), "ingest", enabled=progress)
    planned = {spec.file: len(spec.items) for spec in plan.specs}
    summaries = []

    def done(summary):
        summaries.append(summary)
        bar.update(planned[summary["file"]])

    # A partial of a module-level function pickles, so the same job runs in
    # a thread, a forked worker or on a distributed worker.
    job = functools.partial(build_shard_or_disk_error, source_path=plan.source.path,
                            source_kind=plan.source.kind, settings=plan.settings, out=os.path.abspath(out))
    try:
        run_tasks(plan.specs, job, scheduler, workers, done)
    except BaseException:
        # Every local task has stopped by now (see `ingest.tasks._local_pool`);
        # a shard temp file of one that failed or was killed would otherwise
        # stay until the next run.
        if scheduler in LOCAL_SCHEDULERS:
            remove_temp_files(out)
        raise
    bar.close()
    return sorted(summaries, key=lambda s: (SPLITS.index(s["split"]), s["index"]))


def _decode_skips(summaries, strict):
    """Take the images each shard could not decode out of its summary; with `strict`, refuse them."""
    skipped = [entry for summary in summaries for entry in summary.pop("skipped")]
    if strict and skipped:
        raise UserError(f"--strict: {len(skipped)} image(s) could not be decoded, first: "
                        f"{skipped[0]['name']}: {skipped[0]['reason']}")
    return skipped


def _manifest(plan, summaries, decode_skipped):
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
    skipped = plan.skipped + decode_skipped
    source = plan.source
    return {
        "schema_version": SCHEMA_VERSION,
        "plan": plan.digest,
        "settings": plan.settings.to_json(),
        "source": {"path": source.path, "kind": source.kind, "layout": source.layout, "labels": source.labels,
                   "files_found": plan.images_found + len(source.skipped) + len(source.excluded)},
        # Class names in index order: label i in every shard is classes[i].
        "classes": plan.classes,
        # Classes of the input left out by --classes (their images are in "excluded").
        "excluded_classes": sorted(name for name in class_order(source.class_names)[1]
                                   if name not in plan.classes),
        # Classes too small for their share of validation or test, with their counts.
        "warnings": plan.warnings,
        "splits": splits,
        "shards": shards,
        "skipped": sorted(skipped, key=lambda s: s["name"]),
        "excluded": sorted(plan.excluded, key=lambda s: s["name"]),
        "duplicates": plan.duplicates,
        # Identical files under different labels: {"names", "labels", "kept"}.
        "label_conflicts": plan.conflicts,
        # How near-duplicates were found (docs/shard-format.md).
        # near_distance None: not looked for (--near-distance off); no fingerprint in the shards (0s),
        # and the near-duplicate lists below are empty because nobody looked, not because none exist.
        "fingerprint": ({"kind": FINGERPRINT_KIND, "bits": FINGERPRINT_BITS, "near_distance": plan.settings.near_distance}
                        if plan.settings.near_distance is not None else {"kind": None, "bits": None, "near_distance": None}),
        # Groups of 2+ images within near_distance bits: {"members": [{"name", "label", "split"}], "crosses_splits"}.
        "near_duplicates": plan.near_duplicates,
        # Near-duplicate groups under different labels (likely label errors): {"names", "labels", "kept"}.
        "near_duplicate_conflicts": plan.near_conflicts,
        # Upright width x height of the images as found, before resizing.
        "original_sizes": plan.original_sizes,
        "totals": {
            "images": sum(s["count"] for s in summaries),
            "shards": len(summaries),
            "bytes": sum(s["bytes"] for s in summaries),
            "skipped": len(skipped),
            "excluded": len(plan.excluded),
            "duplicates": len(plan.duplicates),
            "label_conflicts": len(plan.conflicts),
            "near_duplicate_groups": len(plan.near_duplicates),
            "near_duplicate_images": sum(len(group["members"]) for group in plan.near_duplicates),
            "near_duplicate_groups_crossing_splits": sum(g["crosses_splits"] for g in plan.near_duplicates),
            "near_duplicate_conflicts": len(plan.near_conflicts),
        },
    }


def original_sizes(table):
    """A compact summary of the images' sizes before resizing, for a data report.

    {"count", "width": [min, median, max], "height": [...], "aspect": {bucket: count}}:
    aspect is width / height rounded to one decimal, as a string key.
    """
    # Counted per distinct shape, not held per image: a set has few shapes.
    shapes = table.shapes()
    if not shapes:
        return {"count": 0, "width": None, "height": None, "aspect": {}}
    aspects, widths, heights = Counter(), Counter(), Counter()
    for (w, h), count in sorted(shapes.items()):
        aspects[f"{w / h:.1f}"] += count
        widths[w] += count
        heights[h] += count
    return {"count": sum(shapes.values()),
            "width": [min(widths), _median(widths), max(widths)],
            "height": [min(heights), _median(heights), max(heights)],
            "aspect": dict(sorted(aspects.items(), key=lambda kv: float(kv[0])))}


def _median(counts):
    """The median (as numpy.median gives it, a float) of values given as {value: count}."""
    values = sorted(counts)
    total = sum(counts.values())
    middle = [(total - 1) // 2, total // 2]  # positions of the middle value(s) in sorted order
    found, seen = [], 0
    for value in values:
        while len(found) < 2 and middle[len(found)] < seen + counts[value]:
            found.append(value)
        seen += counts[value]
    return float(np.mean(found))


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
