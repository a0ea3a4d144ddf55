"""The first pass of an ingest: one small record per file, computed on the workers.

The split needs every image's content key (exact duplicates) and perceptual
fingerprint (near-duplicate groups) before it can be decided, and the
driver must not read the files itself (it would be serial, and on a cluster
it may not even see them). So the files are cut into chunks and each chunk
is a task of `ingest.tasks.run_tasks`, like a shard: a plain function of
plain arguments that returns small dicts, never pixels.

Each file is read once: its bytes are hashed (sha256) and decoded at the
smallest scale that still gives a 32x32 thumbnail (see
`ingest.fingerprint.fingerprint`). A file whose bytes cannot be read is
skipped here with its reason, as the driver's hashing did; one that cannot
be decoded keeps its record without a fingerprint, and the shard worker
skips it later with the full decoder's reason, as before.
"""
import hashlib
import io
import zipfile
import zlib
from dataclasses import dataclass

from ingest.fingerprint import fingerprint
from ingest.sources import OverLimit, Source, open_archive
from shards.image import BadImage

# Files per scan task: large enough that a task's overhead (a pickle, a
# round trip) is small against ~5 ms a file, small enough for the progress bar.
CHUNK_FILES = 500
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ScanChunk:
    """One scan task: the names of the files it reads."""

    index: int
    names: tuple


def chunks(items, size=None):
    """`items`' names cut into ScanChunks of `size` (default CHUNK_FILES) names, in order."""
    size = size or CHUNK_FILES
    names = [item.name for item in items]
    return [ScanChunk(i, tuple(names[start:start + size])) for i, start in enumerate(range(0, len(names), size))]


def scan_chunk(chunk, source_path, source_kind, max_member_bytes, max_pixels):
    """Records of the files of `chunk`: {"name", "bytes", "sha256", "height", "width", "fingerprint", "colour"}.

    A file that must not or cannot be read is {"name", "reason"}. A file
    that cannot be decoded has height, width and fingerprint None.
    """
    source = Source(source_path, source_kind, layout="")
    archive = open_archive(source_path) if source_kind == "zip" else None
    try:
        return [_scan_one(source, archive, name, max_member_bytes, max_pixels) for name in chunk.names]
    finally:
        if archive is not None:
            archive.close()


def _scan_one(source, archive, name, max_member_bytes, max_pixels):
    size, reason = source.size_of(name, archive, max_member_bytes)
    if reason:
        return {"name": name, "reason": reason}
    if size == 0:
        return {"name": name, "reason": "empty file (0 bytes)"}
    record = {"name": name, "height": None, "width": None, "fingerprint": None, "colour": None}
    try:
        if archive is not None or source.remote:
            # Never more than the limit in memory, even if the archive changed since its size was read.
            f = io.BytesIO(source.read(name, archive, max_member_bytes))
        else:
            f = source.open(name)
        with f:
            record.update(_hash(f))
            f.seek(0)
            try:
                found = fingerprint(f, max_pixels)
                record.update(fingerprint=found.value, height=found.height, width=found.width,
                              colour=bytes(found.colour))  # 32 bytes: 25,000 records stay small
            except BadImage:
                pass  # the shard worker decodes it in full and reports why it fails
    except OverLimit as exc:
        return {"name": name, "reason": str(exc)}
    except OSError as exc:
        return {"name": name, "reason": f"unreadable: {exc.strerror or exc}"}
    except (KeyError, zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as exc:
        return {"name": name, "reason": f"unreadable zip member: {exc}"}
    return record


def _hash(f):
    """{"bytes", "sha256"} of a file object, read in blocks of bounded size."""
    digest, count = hashlib.sha256(), 0
    for block in iter(lambda: f.read(_BLOCK), b""):
        digest.update(block)
        count += len(block)
    return {"bytes": count, "sha256": digest.hexdigest()}
