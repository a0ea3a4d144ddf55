"""The first pass of an ingest: one small record per file, computed on the workers.

The split needs every image's content key (exact duplicates) and perceptual
fingerprint (near-duplicate groups) before it can be decided, and the
driver must not read the files itself (it would be serial, and on a cluster
it may not even see them). So the files are cut into chunks and each chunk
is a task of `ingest.tasks.run_tasks`, like a shard: a plain function of
plain arguments that returns NumPy columns, never pixels.

The driver needs every file's record to plan, so a record is a row of
fixed-size fields (`ScanTable`, 90 bytes), not a dict of Python objects
(about 1 KB), and the rows wait on local disk, not in memory: each step of
the plan reads back the fields it needs, a chunk at a time (issue 12 item
8). The names are not sent back: a chunk's rows are its names' positions in
the file list.

Each file is read once: its bytes are hashed (sha256) and decoded at the
smallest scale that still gives a 32x32 thumbnail (see
`ingest.fingerprint.fingerprint`). A file whose bytes cannot be read is
skipped here with its reason, as the driver's hashing did; one that cannot
be decoded keeps its record without a fingerprint, and the shard worker
skips it later with the full decoder's reason, as before.
"""
import hashlib
import io
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from ingest import catalogue
from ingest.fingerprint import fingerprint, header_size
from ingest.sources import OverLimit, Source, open_archive
from shards.image import BadImage

# Files per scan task: large enough that a task's overhead (a pickle, a
# round trip) is small against ~5 ms a file, small enough for the progress bar.
CHUNK_FILES = 500
_BLOCK = 1 << 20
COLOUR_BYTES = 32


@dataclass(frozen=True)
class ScanChunk:
    """One scan task: the names of the files it reads, which start at row `start` of the file list."""

    index: int
    names: tuple
    start: int = 0


class chunks:
    """The names of `items` (a FileList, ingest.catalogue) as ScanChunks of `size` (default CHUNK_FILES), in order.

    Each chunk's names are read from disk as it is about to be sent; it knows its length.
    """

    def __init__(self, items, size=None):
        self.names, self.size = items.names, size or CHUNK_FILES

    def __len__(self):
        return -(-len(self.names) // self.size)

    def __iter__(self):
        for i, (start, names) in enumerate(self.names.chunks(self.size)):
            yield ScanChunk(i, tuple(names), start)


def _columns(count):
    """Empty columns for `count` files: what unknown or unread means is 0 / False."""
    return {"bytes": np.zeros(count, np.int64),
            "sha256": np.zeros(count, "S32"),  # raw digests: half the hex, and no object per file
            "height": np.zeros(count, np.int32),  # upright size before resizing, 0 unknown
            "width": np.zeros(count, np.int32),
            "fingerprint": np.zeros(count, np.uint64),
            "printed": np.zeros(count, bool),  # has a fingerprint (decoded, not flat)
            "colour": np.zeros((count, COLOUR_BYTES), np.uint8),
            "read": np.zeros(count, bool)}  # False: skipped, its reason in "skipped"


def scan_chunk(chunk, source_path, source_kind, max_member_bytes, max_pixels, fingerprints=True):
    """The columns of the files of `chunk`, plus "start" and "skipped": [(position in chunk, reason)].

    A file that must not or cannot be read has read False and its reason in
    "skipped"; one that cannot be decoded has height, width 0 and no
    fingerprint. Without `fingerprints` only the image header is read.
    """
    source = Source(source_path, source_kind, layout="")
    archive = open_archive(source_path) if source_kind == "zip" else None
    columns = {**_columns(len(chunk.names)), "start": chunk.start, "skipped": []}
    try:
        for row, name in enumerate(chunk.names):
            reason = _scan_one(source, archive, name, max_member_bytes, max_pixels, fingerprints, columns, row)
            if reason:
                columns["skipped"].append((row, reason))
            else:
                columns["read"][row] = True
        return columns
    finally:
        if archive is not None:
            archive.close()


def _scan_one(source, archive, name, max_member_bytes, max_pixels, fingerprints, columns, row):
    """Fill `row` of `columns` from the file `name`; returns why it was skipped, or None."""
    size, reason = source.size_of(name, archive, max_member_bytes)
    if reason:
        return reason
    if size == 0:
        return "empty file (0 bytes)"
    try:
        if archive is not None or source.remote:
            # Never more than the limit in memory, even if the archive changed since its size was read.
            f = io.BytesIO(source.read(name, archive, max_member_bytes))
        else:
            f = source.open(name)
        with f:
            columns["bytes"][row], columns["sha256"][row] = _hash(f)
            f.seek(0)
            try:
                _look(f, max_pixels, fingerprints, columns, row)
            except BadImage:
                pass  # the shard worker decodes it in full and reports why it fails
    except OverLimit as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    except (KeyError, zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as exc:
        return f"unreadable zip member: {exc}"
    return None


def _look(f, max_pixels, fingerprints, columns, row):
    if not fingerprints:
        columns["height"][row], columns["width"][row] = header_size(f, max_pixels)
        return
    found = fingerprint(f, max_pixels)
    columns["height"][row], columns["width"][row] = found.height, found.width
    columns["colour"][row] = found.colour
    if found.value is not None:
        columns["fingerprint"][row], columns["printed"][row] = found.value, True


def _hash(f):
    """(bytes, raw sha256 digest) of a file object, read in blocks of bounded size."""
    digest, count = hashlib.sha256(), 0
    for block in iter(lambda: f.read(_BLOCK), b""):
        digest.update(block)
        count += len(block)
    return count, digest.digest()


# One scanned file as the driver keeps it (on disk): the fields of `_columns`.
RECORD = np.dtype([("bytes", "<i8"), ("sha256", "S32"), ("height", "<i4"), ("width", "<i4"),
                   ("fingerprint", "<u8"), ("printed", "?"), ("colour", "u1", (COLOUR_BYTES,)), ("read", "?")])


class ScanTable:
    """Every scanned file's record as one row, rows in the order of the file list, on local disk.

    Built for the names of the file list (ingest.catalogue.Names) and filled
    by each chunk's columns as they arrive (`fill`), in any order. The rows
    live in an unnamed temporary file (zeros: not read); a step reads back
    the fields it needs, for every row (`column`, `chunks`) or some (`take`).
    """

    def __init__(self, names):
        self.names = names
        self._file = tempfile.TemporaryFile(prefix="kibble-scan-")
        self._file.truncate(len(names) * RECORD.itemsize)
        self.reasons = {}  # row: why the file was skipped

    def __len__(self):
        return len(self.names)

    def fill(self, chunk_columns):
        """Write one chunk's columns (scan_chunk's result) into their rows; returns its file count."""
        start = chunk_columns["start"]
        count = len(chunk_columns["read"])
        records = np.zeros(count, RECORD)
        for key in RECORD.names:
            records[key] = chunk_columns[key]
        os.pwrite(self._file.fileno(), records.tobytes(), start * RECORD.itemsize)
        self.reasons.update((start + row, reason) for row, reason in chunk_columns["skipped"])
        return count

    def chunks(self, fields=None, size=None):
        """(first row, records) of consecutive rows, `size` (default CHUNK_ROWS) at a time; only `fields` if given."""
        size = size or catalogue.CHUNK_ROWS
        for start in range(0, len(self), size):
            count = min(size, len(self) - start)
            raw = os.pread(self._file.fileno(), count * RECORD.itemsize, start * RECORD.itemsize)
            records = np.frombuffer(raw, dtype=RECORD, count=count)
            yield start, (records[list(fields)] if fields else records)

    def column(self, field, rows=None):
        """One field of every row, or of `rows` (increasing), as an array."""
        if rows is None:
            # Copies: a view would keep its chunk's whole buffer (every field) alive.
            parts = [records[field].copy() for _, records in self.chunks((field,))]
        else:
            rows, parts = np.asarray(rows, dtype=np.int64), []
            for start, records in self.chunks((field,)):
                low, high = np.searchsorted(rows, [start, start + len(records)])
                parts.append(records[field][rows[low:high] - start])
        if not parts:
            return np.zeros(0, RECORD[field].base).reshape((0, *RECORD[field].shape))
        return np.concatenate(parts)

    def take(self, rows, fields):
        """The records of `rows` (any order), only `fields` (one name: that field's values)."""
        size, fd = RECORD.itemsize, self._file.fileno()
        records = np.frombuffer(b"".join(os.pread(fd, size, int(row) * size) for row in rows),
                                dtype=RECORD, count=len(rows))
        return records[fields] if isinstance(fields, str) else records[list(fields)]

    def skipped(self):
        """[{"name", "reason"}] of the files that could not be read, in file-list order."""
        return [{"name": self.names[row], "reason": self.reasons[row]} for row in sorted(self.reasons)]

    def shapes(self):
        """{(width, height): count} of the files whose size is known."""
        found = {}
        for _, records in self.chunks(("width", "height")):
            known = (records["width"] > 0) & (records["height"] > 0)
            if known.any():
                pairs = np.stack([records["width"][known], records["height"][known]], axis=1)
                shapes, counts = np.unique(pairs, axis=0, return_counts=True)
                for (width, height), count in zip(shapes.tolist(), counts.tolist()):
                    found[width, height] = found.get((width, height), 0) + count
        return found
