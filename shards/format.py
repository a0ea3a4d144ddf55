"""Reading and writing one shard: an HDF5 file holding images of one split.

Layout of a shard (schema version 2):

    images  uint8  (N, H, W, 3)  RGB, chunked (CHUNK_ROWS, H, W, 3)
    labels  int8   (N,)          class index, -1 = unlabelled (int16 beyond
                                 127 classes: the smallest type that fits)
    names   str    (N,)          source file name of each image
    fingerprints uint64 (N,)     perceptual fingerprint of each image (64-bit
                                 pHash, see ingest/fingerprint.py; 0 unknown)
    orig_sizes   uint32 (N, 2)   (height, width) of each image as found,
                                 upright, before resizing (0 0 unknown)
    attrs   schema_version, split, height, width, fit, count,
            classes (JSON list of class names in index order),
            class_counts (JSON list: images per class index),
            plan (digest of the settings and file list that made the shard),
            skipped (JSON list of files that could not be decoded),
            content_checksum (CRC-32 of images, labels and names; see below)
            extras_checksum (CRC-32 of fingerprints and orig_sizes)

fingerprints and orig_sizes came later within schema version 2: readers
that do not know them ignore them, and content_checksum covers exactly what
it always covered; extras_checksum covers them. A shard without them (an
older ingest) reads as before; `ShardReader.fingerprints` is then None.

A shard proves its own content without the manifest: `content_checksum` is
computed while the datasets are written and `ShardReader.verify_content`
recomputes it, so a resumed ingest can tell a whole shard from a damaged one
even when the manifest (which holds each file's sha256) was never written.

Shards are written under a temporary name and renamed into place once they
are complete and flushed, so a file with the final name is always whole.
"""
import contextlib
import hashlib
import json
import os
import struct
import zlib

import h5py
import numpy as np

from shards.errors import ShardError
from shards.fsio import atomic_path

SCHEMA_VERSION = 2
# Images per HDF5 chunk. Readers fetch whole multiples of this; 64 images of
# 94x125 are 2.2 MB, large enough for sequential reads and small enough that
# a partial read wastes little.
CHUNK_ROWS = 64
COMPRESSIONS = ("none", "lzf", "gzip")
# Shard attribute holding the checksum of the datasets. CRC-32 catches
# damage (zeroed blocks, flipped bits, truncation) at ~1.5 GB/s, about a
# sixtieth of the cost of decoding the images; it is not meant to stop a
# forger, who could rewrite the attribute as easily (the manifest's sha256
# and the folder's owner are the guard there).
CONTENT_ATTR = "content_checksum"
EXTRAS_ATTR = "extras_checksum"
# Bytes of images hashed per read when a checksum is recomputed.
CHECK_BLOCK_BYTES = 16 << 20


def open_h5(path, mode="r"):
    """Open an HDF5 file without relying on HDF5's file locking.

    Shards are immutable once renamed into place, so locks protect nothing,
    and on network filesystems taking them fails ("unable to lock file").
    A URL (s3://...) is read through a streaming file object (shards.storage).
    """
    from shards import storage

    if storage.is_url(path):
        stream = storage.open_stream(path)
        h5 = h5py.File(stream, mode)
        h5.kibble_stream = stream  # closed with the file by ShardReader.close
        return h5
    try:
        return h5py.File(path, mode, locking=False)
    except TypeError:  # h5py built against an HDF5 too old for `locking`
        os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        return h5py.File(path, mode)


def sha256_file(path, block=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def label_dtype(num_classes):
    """The smallest signed integer type holding every class index and -1."""
    return np.int8 if num_classes <= np.iinfo(np.int8).max else np.int16


def count_classes(labels, num_classes):
    """Images per class index in `labels` (-1, unlabelled, not counted), as plain ints."""
    labels = np.asarray(labels)
    known = labels[(labels >= 0) & (labels < num_classes)]
    return [int(n) for n in np.bincount(known.astype(np.int64), minlength=num_classes)]


class ContentChecksum:
    """CRC-32 of a shard's images, labels and names, fed in row order.

    Each dataset has its own running CRC, so the value does not depend on
    how rows are grouped into blocks: the writer feeds its flushed blocks,
    a reader feeds whatever blocks it reads. A name counts as its UTF-8
    bytes after a 4-byte length, so ("ab", "c") and ("a", "bc") differ.
    """

    PREFIX = "crc32:"

    def __init__(self):
        self.images = self.labels = self.names = 0

    def update_images(self, block):
        self.images = zlib.crc32(memoryview(np.ascontiguousarray(block)).cast("B"), self.images)

    def update_labels(self, labels):
        # The stored type's bytes: int8 labels hash as they always did.
        labels = np.asarray(labels)
        self.labels = zlib.crc32(np.ascontiguousarray(labels, dtype=labels.dtype.newbyteorder("<")).tobytes(),
                                 self.labels)

    def update_names(self, names):
        encoded = [n.encode("utf-8") if isinstance(n, str) else bytes(n) for n in names]
        blob = b"".join(struct.pack("<I", len(e)) + e for e in encoded)
        self.names = zlib.crc32(blob, self.names)

    def value(self):
        return f"{self.PREFIX}{self.images:08x}-{self.labels:08x}-{self.names:08x}"


class _ShardWriter:
    def __init__(self, h5, height, width, capacity, compression, classes):
        kwargs = {}
        if compression != "none":
            kwargs["compression"] = compression
        rows = max(1, min(CHUNK_ROWS, capacity))
        self.images = h5.create_dataset(
            "images", shape=(capacity, height, width, 3), dtype="uint8",
            maxshape=(None, height, width, 3), chunks=(rows, height, width, 3), **kwargs)
        self.label_dtype = label_dtype(len(classes))
        self.labels = h5.create_dataset("labels", shape=(capacity,), dtype=self.label_dtype, maxshape=(None,))
        self.names = h5.create_dataset(
            "names", shape=(capacity,), dtype=h5py.string_dtype(), maxshape=(None,))
        self.buffer = np.empty((rows, height, width, 3), dtype=np.uint8)
        self.fingerprints = h5.create_dataset("fingerprints", shape=(capacity,), dtype="uint64", maxshape=(None,))
        self.orig_sizes = h5.create_dataset("orig_sizes", shape=(capacity, 2), dtype="uint32", maxshape=(None, 2))
        self.pending_labels, self.pending_names, self.pending_extras = [], [], []
        self.count = 0
        self.checksum = ContentChecksum()
        self.extras_checksum = 0

    def append(self, image, label, name, fingerprint=0, orig_size=(0, 0)):
        self.buffer[len(self.pending_labels)] = image
        self.pending_labels.append(label)
        self.pending_names.append(name)
        self.pending_extras.append((fingerprint, *orig_size))
        if len(self.pending_labels) == len(self.buffer):
            self.flush()

    def flush(self):
        n = len(self.pending_labels)
        if n == 0:
            return
        end = self.count + n
        if end > self.images.shape[0]:
            for ds in (self.images, self.labels, self.names, self.fingerprints, self.orig_sizes):
                ds.resize(end, axis=0)
        labels = np.asarray(self.pending_labels, dtype=self.label_dtype)
        self.images[self.count:end] = self.buffer[:n]
        self.labels[self.count:end] = labels
        self.names[self.count:end] = self.pending_names
        fingerprints, sizes = extras_arrays(self.pending_extras)
        self.fingerprints[self.count:end] = fingerprints
        self.orig_sizes[self.count:end] = sizes
        self.extras_checksum = extras_crc(fingerprints, sizes, self.extras_checksum)
        # Hashed from the same buffers just written: no second pass over the pixels.
        self.checksum.update_images(self.buffer[:n])
        self.checksum.update_labels(labels)
        self.checksum.update_names(self.pending_names)
        self.count = end
        self.pending_labels, self.pending_names, self.pending_extras = [], [], []


def extras_arrays(extras):
    """(fingerprints uint64 (n,), orig_sizes uint32 (n, 2)) from (fingerprint, height, width) tuples."""
    fingerprints = np.array([int(e[0]) for e in extras], dtype=np.uint64)
    sizes = np.array([(int(e[1]), int(e[2])) for e in extras], dtype=np.uint32).reshape(-1, 2)
    return fingerprints, sizes


def extras_crc(fingerprints, sizes, crc=0):
    """Running CRC-32 of fingerprints and original sizes, as little-endian bytes, in row order."""
    for array in (fingerprints, sizes):
        crc = zlib.crc32(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes(), crc)
    return crc


@contextlib.contextmanager
def write_shard(path, *, height, width, capacity, attrs, classes, compression="none"):
    """Write a shard atomically; yields a writer with `append(image, label, name)`.

    `classes` are the class names in index order (a label is an index into
    them, -1 unlabelled). `capacity` is the expected number of images (the
    datasets shrink if fewer are appended). On leaving the block the file is completed, flushed to
    disk and renamed to `path`; on an exception the partial file is removed.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}. Received: compression={compression!r}")
    with atomic_path(path) as tmp:  # flushed and renamed into place only when whole
        with open_h5(tmp, "w") as h5:
            classes = [str(name) for name in classes]
            writer = _ShardWriter(h5, height, width, capacity, compression, classes)
            writer.attrs = dict(attrs)  # the caller may add to it while writing
            yield writer
            writer.flush()
            for ds in (writer.images, writer.labels, writer.names, writer.fingerprints, writer.orig_sizes):
                ds.resize(writer.count, axis=0)
            labels = writer.labels[:]
            h5.attrs.update({
                "schema_version": SCHEMA_VERSION,
                "height": height,
                "width": width,
                "count": writer.count,
                "classes": json.dumps(classes),
                "class_counts": json.dumps(count_classes(labels, len(classes))),
                **writer.attrs,
                CONTENT_ATTR: writer.checksum.value(),
                EXTRAS_ATTR: f"{ContentChecksum.PREFIX}{writer.extras_checksum:08x}",
            })


class ShardReader:
    """Read access to one shard; use as a context manager.

    `read(start, stop)` returns uint8 images of shape (stop - start, H, W, 3)
    in one HDF5 call. `labels` (class indices, int8 or int16) and `names`
    (str) are loaded whole: they are small.
    """

    def __init__(self, path):
        self.path = str(path)
        try:
            self._h5 = open_h5(self.path, "r")
        except FileNotFoundError:
            raise ShardError(self.path, "file not found; run `ingest` again to rebuild it") from None
        except OSError as exc:
            raise ShardError(self.path, f"cannot be opened as HDF5 ({exc})") from None
        try:
            self.attrs = {k: _plain(v) for k, v in self._h5.attrs.items()}
            self.images = self._h5["images"]
            self.count = int(self.images.shape[0])
        except KeyError as exc:
            self._h5.close()
            raise ShardError(self.path, f"not a shard: missing {exc}") from None
        version = self.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            self._h5.close()
            raise ShardError(self.path, f"schema version {version}, expected {SCHEMA_VERSION} "
                                        "(made by another kibble version): run `ingest --force` again")

    @property
    def classes(self):
        """Class names in index order, as the shard records them."""
        return self._json_list("classes")

    @property
    def class_counts(self):
        return self._json_list("class_counts")

    def _json_list(self, key):
        try:
            value = json.loads(self.attrs[key])
        except (KeyError, TypeError, ValueError) as exc:
            raise ShardError(self.path, f"attribute {key!r} is missing or not JSON ({exc})") from None
        if not isinstance(value, list):
            raise ShardError(self.path, f"attribute {key!r} is not a list")
        return value

    @property
    def labels(self):
        return self._h5["labels"][:]

    @property
    def names(self):
        return [n.decode() if isinstance(n, bytes) else n for n in self._h5["names"][:]]

    @property
    def fingerprints(self):
        """uint64 perceptual fingerprints (0 unknown), or None for a shard written before they existed."""
        return self._h5["fingerprints"][:] if "fingerprints" in self._h5 else None

    @property
    def orig_sizes(self):
        """uint32 (N, 2): (height, width) of each image as found (0 0 unknown), or None (older shard)."""
        return self._h5["orig_sizes"][:] if "orig_sizes" in self._h5 else None

    @property
    def skipped(self):
        return json.loads(self.attrs.get("skipped", "[]"))

    def content_checksum(self):
        """Recompute the checksum of the datasets, as stored in CONTENT_ATTR when written."""
        checksum = ContentChecksum()
        row_bytes = max(1, int(np.prod(self.images.shape[1:])))
        rows = max(1, CHECK_BLOCK_BYTES // row_bytes)
        chunk = (self.images.chunks or (1,))[0]
        if rows >= chunk:  # whole chunks per read, so a compressed chunk is decoded once
            rows -= rows % chunk
        for start in range(0, self.count, rows):
            checksum.update_images(self.read(start, min(self.count, start + rows)))
        try:
            checksum.update_labels(self._h5["labels"][:])
            checksum.update_names(self._h5["names"][:])
        except (OSError, KeyError) as exc:
            raise ShardError(self.path, f"labels or names cannot be read ({exc})") from None
        return checksum.value()

    def verify_content(self):
        """Raise ShardError unless the datasets match the checksum and counts stored in the shard.

        Needs no manifest: this is how a resumed ingest decides whether a
        shard it finds was written whole.
        """
        stored = self.attrs.get(CONTENT_ATTR)
        if not isinstance(stored, str) or not stored.startswith(ContentChecksum.PREFIX):
            raise ShardError(self.path, f"has no {CONTENT_ATTR} attribute (written by an older kibble); "
                                        "its content cannot be checked")
        try:
            labels = self._h5["labels"][:]
            names = self._h5["names"].shape[0]
        except (OSError, KeyError) as exc:
            raise ShardError(self.path, f"labels or names cannot be read ({exc})") from None
        classes = self.classes
        if np.any((labels < -1) | (labels >= len(classes))):
            raise ShardError(self.path, f"holds labels outside -1..{len(classes) - 1} for its {len(classes)} classes")
        found = {"count": self.count, "labels": len(labels), "names": names,
                 "class_counts": count_classes(labels, len(classes))}
        expected = {"count": self.attrs.get("count"), "labels": self.count, "names": self.count,
                    "class_counts": self.class_counts}
        if found != expected:
            raise ShardError(self.path, f"datasets hold {found}, its attributes say {expected}")
        if self.content_checksum() != stored:
            raise ShardError(self.path, f"content differs from its {CONTENT_ATTR} (images damaged)")
        self._verify_extras()

    def _verify_extras(self):
        """Check fingerprints and orig_sizes against EXTRAS_ATTR, when the shard has them."""
        stored = self.attrs.get(EXTRAS_ATTR)
        if stored is None and "fingerprints" not in self._h5:
            return  # an older shard: nothing to check
        try:
            fingerprints, sizes = self._h5["fingerprints"][:], self._h5["orig_sizes"][:]
        except (OSError, KeyError) as exc:
            raise ShardError(self.path, f"fingerprints or orig_sizes cannot be read ({exc})") from None
        if len(fingerprints) != self.count or sizes.shape != (self.count, 2):
            raise ShardError(self.path, f"fingerprints/orig_sizes hold {len(fingerprints)}/{len(sizes)} rows "
                                        f"for {self.count} images")
        if stored != f"{ContentChecksum.PREFIX}{extras_crc(fingerprints, sizes):08x}":
            raise ShardError(self.path, f"fingerprints or orig_sizes differ from its {EXTRAS_ATTR} (damaged)")

    def read(self, start, stop):
        try:
            return self.images[start:stop]
        except OSError as exc:
            raise ShardError(self.path, f"read of images {start}:{stop} failed ({exc})") from None

    def read_labelled(self, start, stop, out=None, names=True):
        """(images, labels, names) of images start..stop, one HDF5 read each.

        With `out` (a uint8 array of shape (stop - start, H, W, 3)), the
        pixels are read straight into it and `out` is returned as images.
        With `names=False` the names come back as None (saves a read).
        """
        try:
            if out is None:
                images = self.images[start:stop]
            else:
                self.images.read_direct(out, np.s_[start:stop])
                images = out
            labels = self._h5["labels"][start:stop]
            if not names:
                return images, labels, None
            return images, labels, [n.decode() if isinstance(n, bytes) else n
                                    for n in self._h5["names"][start:stop]]
        except OSError as exc:
            raise ShardError(self.path, f"read of images {start}:{stop} failed ({exc})") from None

    def close(self):
        stream = getattr(self._h5, "kibble_stream", None)
        self._h5.close()
        if stream is not None:
            stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
