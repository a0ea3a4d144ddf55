"""The work of one shard task: decode a shard's files and write the shard.

A plain function of plain arguments, so it runs the same in a thread, in a
local process or on a distributed worker, and can be tested without Dask.
"""
import contextlib
import json
import os
import shutil
import tempfile

from ingest.plan import zip_member_limit
from ingest.sources import OverLimit, Source, open_archive
from shards import storage
from shards.errors import ShardError, UserError
from shards.format import ShardReader, sha256_file, write_shard
from shards.fsio import CRASH_ENV, CRASH_EXIT, crash_point, disk_errno  # noqa: F401 - the hook's names for tests
from shards.image import BadImage, load_image

# Steps of a shard's commit that the crash tests stop at (shards.fsio.crash_point).
CRASH_STEPS = ("shard-writing", "shard-renamed", "shard-uploaded", "manifest-before", "manifest-temp-written",
               "manifest-renamed")


def _existing(path, digest):
    """The finished shard at `path` if it was made from exactly this plan and is whole.

    Its own content checksum must hold: the manifest with the shard's sha256
    may never have been written (a crash just before it), so the plan
    attribute alone would keep a shard whose pixels were damaged since.
    """
    if not os.path.isfile(path):
        return None
    try:
        with ShardReader(path) as shard:
            if shard.attrs.get("plan") == digest:
                shard.verify_content()
                return {"count": shard.count, "class_counts": shard.class_counts, "skipped": shard.skipped}
    except (ShardError, ValueError, TypeError):
        pass  # damaged, foreign or from an older kibble: rebuilt below
    return None


def build_shard(spec, source_path, source_kind, settings, out):
    """Write `out/spec.file` unless an identical one exists; return its summary.

    The summary is a small dict (file, split, count, class_counts, sha256,
    bytes, skipped, reused): no pixels travel back to the scheduler. A file
    that cannot be read or decoded is skipped with its reason.
    """
    path = os.path.join(out, spec.file)
    summary = _existing(path, spec.digest)
    reused = summary is not None
    if not reused:
        skipped, written = [], [0] * len(spec.classes)
        count = 0
        limit = zip_member_limit(settings.max_pixels)
        source = Source(source_path, source_kind, layout="")
        with contextlib.ExitStack() as stack:
            archive = stack.enter_context(open_archive(source_path)) if source_kind == "zip" else None
            writer = stack.enter_context(write_shard(
                path, height=settings.size[0], width=settings.size[1], capacity=len(spec.items),
                compression=settings.compression, classes=spec.classes,
                attrs={"split": spec.split, "index": spec.index, "fit": settings.fit,
                       "plan": spec.digest, "skipped": "[]"}))
            for name, label, fingerprint, height, width in spec.items:
                try:
                    data = (_read_member(source, archive, name, limit) if archive or source.remote
                            else os.path.join(source_path, name))
                    image = load_image(data, settings.size, settings.fit, settings.max_pixels, settings.draft)
                except BadImage as exc:
                    skipped.append({"name": name, "reason": str(exc)})
                    continue
                # The scan's fingerprint and original size: no second decode for them.
                writer.append(image, label, name, fingerprint, (height, width))
                count += 1
                if label >= 0:
                    written[label] += 1
            # Recorded inside the shard, so a resumed ingest still reports them.
            writer.attrs["skipped"] = json.dumps(skipped)
            crash_point("shard-writing")
        crash_point("shard-renamed")
        summary = {"count": count, "class_counts": written, "skipped": skipped}
    return {"file": spec.file, "split": spec.split, "index": spec.index, **summary,
            "sha256": sha256_file(path), "bytes": os.path.getsize(path), "reused": reused}


def build_shard_or_disk_error(spec, source_path, source_kind, settings, out):
    """`build_shard`, with a write the disk refused (full, read-only, too large)
    raised as OSError naming the shard, for a one-line message."""
    try:
        return build_shard(spec, source_path, source_kind, settings, out)
    except (OSError, RuntimeError) as exc:
        code = disk_errno(exc)
        if code is None or getattr(exc, "filename", None):
            raise  # not the disk's doing, or already naming its file
        path = os.path.join(out, spec.file)
        error = OSError(code, os.strerror(code), path)
        # HDF5 does not recover from a write that failed while closing a file:
        # this process's HDF5 can crash when it next tidies up (at exit at the
        # latest). Marked so that an in-process caller can end without that.
        error.hdf5_unusable = True
        raise error from None


def _read_member(source, archive, name, limit):
    """The bytes of one zip member or object at a URL, never more than `limit` of them in memory.

    Members declaring more were skipped while planning; reading at most
    limit + 1 bytes keeps that promise even if the archive changed since.
    """
    try:
        return source.read(name, archive, limit)
    except MemoryError:
        raise
    except OverLimit as exc:
        raise BadImage(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - zipfile and fsspec raise many kinds (BadZipFile, zlib.error...)
        what = "zip member" if archive is not None else "object"
        raise BadImage(f"unreadable {what}: {exc}") from None


def build_and_upload(spec, source_path, source_kind, settings, url):
    """On a worker of a cluster with no shared disk: build one shard locally, check it, upload it to `url`.

    The shard is written in a temporary folder of this worker (its TMPDIR),
    read back and checked against the content checksum it was written with,
    and put whole at url/spec.file (an object store shows a put object
    entirely or not at all, so a worker killed mid-upload leaves the old
    object or none). Returns build_shard's summary plus the object's version
    token; nothing but the URL, which carries no credentials, is needed:
    this worker's storage credentials come from its own environment.
    Errors come back as UserError, which pickles for the driver.
    """
    folder = tempfile.mkdtemp(prefix="kibble-shard-")
    try:
        summary = build_shard_or_disk_error(spec, source_path, source_kind, settings, folder)
        path = os.path.join(folder, spec.file)
        try:
            with ShardReader(path) as shard:
                shard.verify_content()
        except ShardError as exc:
            raise UserError(f"shard {spec.file} built on worker failed its check before upload: {exc.problem}") \
                from None
        fs, root = storage.filesystem(url)
        key = f"{root.rstrip('/')}/{spec.file}"
        with storage.remote_errors(url, "upload to"):
            fs.put_file(path, key)
            crash_point("shard-uploaded")
            size, token = fs.info(key).get("size"), str(fs.checksum(key))
        if size != summary["bytes"]:
            raise UserError(f"{storage.public(url)}/{spec.file} holds {size} bytes after upload, "
                            f"{summary['bytes']} were sent; run ingest again")
        return {**summary, "token": token}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
