"""The work of one shard task: decode a shard's files and write the shard.

A plain function of plain arguments, so it runs the same in a thread, in a
local process or on a distributed worker, and can be tested without Dask.
"""
import contextlib
import json
import os
import zipfile

from ingest.plan import zip_member_limit
from shards.errors import ShardError
from shards.format import ShardReader, sha256_file, write_shard
from shards.fsio import CRASH_ENV, CRASH_EXIT, crash_point, disk_errno  # noqa: F401 - the hook's names for tests
from shards.image import BadImage, load_image

# Steps of a shard's commit that the crash tests stop at (shards.fsio.crash_point).
CRASH_STEPS = ("shard-writing", "shard-renamed", "manifest-before", "manifest-temp-written",
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
        with contextlib.ExitStack() as stack:
            archive = stack.enter_context(zipfile.ZipFile(source_path)) if source_kind == "zip" else None
            writer = stack.enter_context(write_shard(
                path, height=settings.size[0], width=settings.size[1], capacity=len(spec.items),
                compression=settings.compression, classes=spec.classes,
                attrs={"split": spec.split, "index": spec.index, "fit": settings.fit,
                       "plan": spec.digest, "skipped": "[]"}))
            for name, label, fingerprint, height, width in spec.items:
                try:
                    data = _read_member(archive, name, limit) if archive else os.path.join(source_path, name)
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


def _read_member(archive, name, limit):
    """The bytes of one zip member, never more than `limit` of them in memory.

    Members declaring more were skipped while planning; reading at most
    limit + 1 bytes keeps that promise even if the archive changed since.
    """
    try:
        with archive.open(name) as member:
            data = member.read(limit + 1)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises many kinds (BadZipFile, zlib.error, NotImplementedError...)
        raise BadImage(f"unreadable zip member: {exc}") from None
    if len(data) > limit:
        raise BadImage(f"zip member holds over {limit:,} bytes, the limit for --max-pixels")
    return data
