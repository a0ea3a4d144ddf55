"""`ingest`: a folder or zip of images in, verified HDF5 shards and a manifest out."""
import contextlib
import multiprocessing
import os
import re
import time

from ingest.plan import (
    IngestSettings,
    apply_exclusions,
    drop_duplicates,
    hash_items,
    read_exclusions,
    shard_specs,
    split_items,
)
from ingest.sources import discover
from ingest.worker import build_shard
from shards.errors import UserError
from shards.manifest import MANIFEST_NAME, SPLITS, load_manifest, verify_shards, write_json_atomic
from shards.progress import Progress

_SHARD_FILE = re.compile(r"^(train|val|test|unlabeled)-\d{5}\.h5$")
_TEMP_FILE = re.compile(r"^\..+\.tmp-\d+$")


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
    if scheduler in ("processes", "threads", "sync"):
        from dask.callbacks import Callback

        class _Report(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if isinstance(result, list) and result and isinstance(result[0], dict) and "sha256" in result[0]:
                    for summary in result:
                        on_done(summary)

        options = {}
        if scheduler == "processes" and "fork" in multiprocessing.get_all_start_methods():
            # Forked workers start with the driver's modules already imported;
            # spawned ones spend about a second importing NumPy, h5py and Pillow.
            options["multiprocessing.context"] = "fork"
        with _Report(), dask.config.set(options):
            # chunksize=1: hand out one shard at a time, so both the progress bar
            # and the load balance across workers stay even.
            dask.compute(*parts, scheduler=scheduler, num_workers=workers, chunksize=1)
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
    Raises UserError for input the user must fix; nothing is written then.
    """
    try:
        settings.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    started = time.monotonic()
    source = discover(input_path)
    items, excluded = apply_exclusions(source.items, read_exclusions(exclude))
    hashes, unreadable = hash_items(source, items)
    items, duplicates = drop_duplicates(items, hashes)
    skipped = source.skipped + unreadable
    if strict and skipped:
        raise UserError(f"--strict: {len(skipped)} file(s) cannot be used, first: "
                        f"{skipped[0]['name']}: {skipped[0]['reason']}")
    splits = split_items(items, settings)
    specs = shard_specs(splits, settings)
    plan = _plan_digest(specs, settings)

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
    _run_tasks(specs, run_one, scheduler, workers, done)
    bar.close()

    summaries = sorted(finished.values(), key=lambda s: (SPLITS.index(s["split"]), s["index"]))
    decode_skipped = [entry for s in summaries for entry in s.pop("skipped")]
    if strict and decode_skipped:
        raise UserError(f"--strict: {len(decode_skipped)} image(s) could not be decoded, first: "
                        f"{decode_skipped[0]['name']}: {decode_skipped[0]['reason']}")
    manifest = _manifest(source, settings, plan, summaries, skipped + decode_skipped,
                         excluded, duplicates)
    write_json_atomic(os.path.join(out, MANIFEST_NAME), manifest)
    reused = sum(1 for s in summaries if s["reused"])
    return {**manifest, "unchanged": False, "reused_shards": reused,
            "seconds": round(time.monotonic() - started, 2)}


class _ShardJob:
    """Picklable callable for Dask: build one shard with fixed settings."""

    def __init__(self, source_path, source_kind, settings, out):
        self.args = (source_path, source_kind, settings, out)

    def __call__(self, spec):
        return build_shard(spec, *self.args)


def _plan_digest(specs, settings):
    import hashlib
    import json

    blob = json.dumps([settings.to_json(), [spec.digest for spec in specs]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _manifest(source, settings, plan, summaries, skipped, excluded, duplicates):
    from shards.format import SCHEMA_VERSION

    splits = {}
    for split in SPLITS:
        mine = [s for s in summaries if s["split"] == split]
        if mine:
            splits[split] = {
                "count": sum(s["count"] for s in mine),
                "cats": sum(s["cats"] for s in mine),
                "dogs": sum(s["dogs"] for s in mine),
                "shards": [s["file"] for s in mine],
            }
    shards = [{k: s[k] for k in ("file", "split", "index", "count", "cats", "dogs", "sha256", "bytes")}
              for s in summaries]
    return {
        "schema_version": SCHEMA_VERSION,
        "plan": plan,
        "settings": settings.to_json(),
        "source": {"path": source.path, "kind": source.kind, "layout": source.layout,
                   "files_found": len(source.items) + len(source.skipped)},
        "splits": splits,
        "shards": shards,
        "skipped": sorted(skipped, key=lambda s: s["name"]),
        "excluded": sorted(excluded),
        "duplicates": duplicates,
        "totals": {
            "images": sum(s["count"] for s in summaries),
            "shards": len(summaries),
            "bytes": sum(s["bytes"] for s in summaries),
            "skipped": len(skipped),
            "excluded": len(excluded),
            "duplicates": len(duplicates),
        },
    }

