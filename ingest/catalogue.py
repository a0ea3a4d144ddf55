"""The driver's per-file state at scale: names on local disk, the rest as small NumPy columns.

An ingest's driver must know every file to plan (issue 12 item 8: its
memory may not grow with the input), yet a Python string per name costs
~70 bytes and a tuple or object around it more. So a file is a row number:
its name lives in an unnamed temporary file (`Names`), read back by row or
in chunks when a step needs it, and its label and split are one entry of a
NumPy column (`FileList`). Unnamed files (the kernel's O_TMPFILE where it
has one) vanish when closed, when their object is collected, or when the
process dies, even by SIGKILL: no scratch is ever left behind. They go to
the system's temporary folder ($TMPDIR, else /tmp).
"""
import os
import tempfile

import numpy as np

# Names from os.scandir may hold lone surrogates (bytes that are not UTF-8):
# stored and read back unchanged.
_ENCODING = ("utf-8", "surrogatepass")
# Rows read back (and names written) in one go: what a step holds at a time.
CHUNK_ROWS = 16384
# Split codes of FileList.split: the split the input's folders (or labels file) give.
SPLIT_CODES = (None, "train", "val", "test")
# Label codes of FileList.label besides the class codes 0, 1, ...
UNLABELED = -1
NOT_AN_ITEM = -2  # a file found that is no image to ingest (skipped, or not named by the labels file)


class Names:
    """An append-only list of strings on local disk: row i is the i-th name appended.

    The UTF-8 bytes go to one unnamed file, each name's end offset (uint64)
    to another; nothing per name stays in memory.
    """

    def __init__(self, names=()):
        self._blob = tempfile.TemporaryFile(prefix="kibble-names-")
        self._ends = tempfile.TemporaryFile(prefix="kibble-ends-")
        self._count = 0
        self._size = 0
        self._pending, self._pending_ends = [], []
        self.extend(names)

    def append(self, name):
        data = name.encode(*_ENCODING)
        self._size += len(data)
        self._pending.append(data)
        self._pending_ends.append(self._size)
        self._count += 1
        if len(self._pending) >= CHUNK_ROWS:
            self._flush()

    def extend(self, names):
        for name in names:
            self.append(name)

    def _flush(self):
        if self._pending:
            self._blob.write(b"".join(self._pending))
            self._ends.write(np.array(self._pending_ends, dtype=np.uint64).tobytes())
            self._blob.flush()
            self._ends.flush()
            self._pending, self._pending_ends = [], []

    def __len__(self):
        return self._count

    def _read_ends(self, start, stop):
        """End offsets of rows start-1 .. stop-1 (the first is 0 for row 0)."""
        first = max(start - 1, 0)
        raw = os.pread(self._ends.fileno(), (stop - first) * 8, first * 8)
        ends = np.frombuffer(raw, dtype=np.uint64).astype(np.int64)
        return ends if start else np.concatenate([[0], ends])

    def slice(self, start, stop):
        """The names of rows start .. stop-1, as a list."""
        self._flush()
        stop = min(stop, self._count)
        if start >= stop:
            return []
        ends = self._read_ends(start, stop)
        base = int(ends[0])
        data = os.pread(self._blob.fileno(), int(ends[-1]) - base, base)
        bounds = (ends - base).tolist()
        return [data[a:b].decode(*_ENCODING) for a, b in zip(bounds, bounds[1:])]

    def __getitem__(self, row):
        row = int(row)
        if not 0 <= row < self._count:
            raise IndexError(row)
        return self.slice(row, row + 1)[0]

    def take(self, rows):
        """The names of `rows` (any order, repeats allowed), as a list in that order."""
        self._flush()
        return [self[row] for row in rows]

    def chunks(self, size=None, start=0, stop=None):
        """(first row, [names]) of consecutive rows, `size` (default CHUNK_ROWS) at a time."""
        size = size or CHUNK_ROWS
        stop = self._count if stop is None else min(stop, self._count)
        for first in range(start, stop, size):
            yield first, self.slice(first, min(first + size, stop))

    def __iter__(self):
        for _, names in self.chunks():
            yield from names

    def close(self):
        self._blob.close()
        self._ends.close()


class FileList:
    """Files as rows: `names` on disk (Names), `label` (int32) and `split` (int8, SPLIT_CODES) columns.

    Discovery fills one for every file of the input, in name order, with
    NOT_AN_ITEM for those that are no image to ingest; the plan keeps the
    images it uses in a second one (`subset`) whose label is a class index
    or UNLABELED.
    """

    def __init__(self, names, label, split):
        self.names = names
        self.label = label
        self.split = split

    def __len__(self):
        return len(self.names)

    def subset(self, keep, label=None):
        """A FileList of the rows where `keep` (bool per row) is True, its names copied chunk by chunk.

        `label`, if given, replaces this list's label column.
        """
        names = Names()
        for first, chunk in self.names.chunks():
            names.extend(chunk[i] for i in np.flatnonzero(keep[first:first + len(chunk)]).tolist())
        return FileList(names, (self.label if label is None else label)[keep], self.split[keep])

    def split_name(self, row):
        return SPLIT_CODES[int(self.split[row])]


def rows_where(mask):
    """The rows where `mask` is True, as int32: numpy.flatnonzero without its int64 copy of them all."""
    rows = np.empty(int(np.count_nonzero(mask)), dtype=np.int32)
    done = 0
    for start in range(0, len(mask), CHUNK_ROWS):
        found = np.flatnonzero(mask[start:start + CHUNK_ROWS])
        rows[done:done + len(found)] = found + start
        done += len(found)
    return rows
