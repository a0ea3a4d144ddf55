"""`ingest --scheduler tcp://... --out s3://...`: a Dask cluster with no shared disk.

The driver (this process) lists INPUT, plans, and writes the manifest; it
never reads an image and never holds a shard. Every worker reads its files
by URL (the scan pass, then its shards), builds each shard in its own
temporary folder, checks it and uploads it (ingest.worker.build_and_upload),
and sends back only the small summary: counts, sha256, bytes and the
object's version token.

The bucket follows the commit rule of ingest.upload: manifest.json goes up
last, after every shard is in place. What a re-run finds in the bucket is
proved with that module's checks (bucket_holds): against the bucket's
manifest when it is this very ingest, else against the driver's record
(STAGING/upload.json, which here holds no shard, only what each upload
returned). Only the shards that fail are built and uploaded again.

Shards are byte-deterministic (same plan, same bytes: h5py records no
times), so a task Dask runs twice, after a worker was lost, puts the very
same object twice.
"""
import functools
import json
import os
import shutil
import time

from ingest import upload
from ingest.worker import build_and_upload
from shards import storage
from shards.fsio import FolderLock
from shards.manifest import MANIFEST_NAME, SPLITS
from shards.progress import Progress


def ingest_on_cluster(plan_ingest, input_path, url, settings, *, scheduler, staging=None, exclude=None,
                      strict=False, force=False, progress=True, labels=None):
    """Ingest `input_path` into the URL `url` through the dask.distributed `scheduler`.

    `plan_ingest` is ingest.run's module (its _plan, _decode_skips and
    _manifest), passed in so the layers keep their import direction.
    Returns what ingest.run.ingest returns for a URL --out: the manifest with
    "unchanged", "reused_shards", "seconds", "upload" and "staging".
    """
    started = time.monotonic()
    storage.check_url(url)
    fs, root = storage.filesystem(url)
    settings.validate()
    plan = plan_ingest._plan(input_path, settings, exclude, strict, scheduler, None, progress, labels)
    chosen = staging is not None
    staging = staging or upload.default_staging(url)
    os.makedirs(staging, exist_ok=True)
    with FolderLock(staging, "staging folder"):
        storage.forget_listings(url)
        remote_raw = upload.remote_manifest(fs, root, url, plan.digest, force)
        remote = _parse(remote_raw)
        committed = remote is not None and remote.get("plan") == plan.digest
        report = upload.new_report(committed)
        record = upload.Record(staging, url)
        if remote_raw is not None and not committed:
            with storage.remote_errors(url, "replace the manifest in"):
                fs.rm_file(upload.object_key(root, MANIFEST_NAME))  # incomplete until ours goes up
        summaries = _build(plan, url, scheduler, fs, root, record, remote if committed else None, report,
                           progress)
        decode_skipped = plan_ingest._decode_skips(summaries, strict)
        manifest = plan_ingest._manifest(plan, summaries, decode_skipped)
        raw = (json.dumps(manifest, indent=2) + "\n").encode()
        if force:
            upload.remove_stale(fs, root, url, {s["file"] for s in summaries})
        unchanged = remote_raw == raw and not report["uploaded"]
        if remote_raw != raw:
            with storage.remote_errors(url, "upload to"):
                fs.pipe_file(upload.object_key(root, MANIFEST_NAME), raw)  # the commit point, last
            report["manifest"] = "uploaded"
    if not chosen:
        shutil.rmtree(staging, ignore_errors=True)
    reused = sum(1 for s in summaries if s["reused"])
    return {**manifest, "unchanged": unchanged, "reused_shards": reused,
            "seconds": round(time.monotonic() - started, 2), "upload": report,
            "staging": staging if chosen else None}


def _parse(raw):
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _build(plan, url, scheduler, fs, root, record, committed_manifest, report, progress):
    """Summaries of every planned shard, in manifest order: proved in the bucket, or built and uploaded."""
    from ingest.tasks import run_tasks

    bar = Progress(sum(len(spec.items) for spec in plan.specs), "ingest", enabled=progress)
    summaries, todo = [], []
    for spec in plan.specs:
        kept = _kept(spec, fs, root, url, record, committed_manifest, report)
        if kept is None:
            todo.append(spec)
        else:
            summaries.append(kept)
            bar.update(len(spec.items))
    sizes = {spec.file: len(spec.items) for spec in plan.specs}
    digests = {spec.file: spec.digest for spec in plan.specs}

    def done(summary):
        token = summary.pop("token")
        # Recorded at once: an interrupted run keeps what reached the bucket.
        record.keep(summary, token, digest=digests[summary["file"]], bytes=summary["bytes"],
                    summary={k: summary[k] for k in ("count", "class_counts", "skipped")})
        report["uploaded"] += 1
        report["uploaded_bytes"] += summary["bytes"]
        summaries.append(summary)
        bar.update(sizes[summary["file"]])

    # Plain arguments only: the spec, the source's URL and the settings; no
    # credential (each worker has its own) and no path of this machine.
    job = functools.partial(build_and_upload, source_path=plan.source.path, source_kind=plan.source.kind,
                            settings=plan.settings, url=storage.public(url))
    run_tasks(todo, job, scheduler, None, done)
    bar.close()
    return sorted(summaries, key=lambda s: (SPLITS.index(s["split"]), s["index"]))


def _kept(spec, fs, root, url, record, committed_manifest, report):
    """The summary of `spec`'s shard if the bucket provably holds it already, else None."""
    names = {item[0] for item in spec.items}
    if committed_manifest is not None:
        entry = next((e for e in committed_manifest.get("shards", []) if e.get("file") == spec.file), None)
        if entry is None:
            return None
        # Images that failed to decode are listed in the manifest's "skipped", each under one shard's name.
        skipped = [s for s in committed_manifest.get("skipped", []) if s.get("name") in names]
        summary = {**{k: entry[k] for k in ("count", "class_counts")}, "skipped": skipped}
    else:
        entry = record.entry(spec.file)
        if entry is None or entry.get("digest") != spec.digest or not isinstance(entry.get("summary"), dict):
            return None
        entry = {**entry, "file": spec.file}
        summary = entry["summary"]
    if not upload.bucket_holds(fs, root, url, entry, record, committed_manifest is not None, report):
        return None
    # bucket_holds recorded the bare proof; add what a later run needs to reuse it without a manifest.
    record.keep(entry, record.entry(spec.file)["token"], digest=spec.digest, bytes=entry["bytes"], summary=summary)
    return {"file": spec.file, "split": spec.split, "index": spec.index, **summary,
            "sha256": entry["sha256"], "bytes": entry["bytes"], "reused": True}
