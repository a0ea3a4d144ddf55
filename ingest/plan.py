"""Decide which file goes to which split and shard.

Everything here is a pure function of the file list, the scan's small
record of each file (its sha256 for exact duplicates, its perceptual
fingerprint for near-duplicate groups; see ingest.scan) and the settings,
so the same input and seed always give the same plan, whatever ran the
scan, and an interrupted ingest can recognise the shards it already
finished. Nothing here reads a file.
"""
import hashlib
import json
import math
import os
import pickle
import tempfile
from array import array
from dataclasses import asdict, dataclass

import numpy as np

from ingest.catalogue import NOT_AN_ITEM, SPLIT_CODES, rows_where
from ingest.fingerprint import DEFAULT_DISTANCE, MAX_COLOUR_DIFFERENCE, MAX_DISTANCE, groups, near_pairs
from ingest.sources import UNLABELED, Item
from shards.errors import UserError
from shards.format import COMPRESSIONS, SCHEMA_VERSION
from shards.image import DEFAULT_MAX_PIXELS, DEFAULT_SIZE, FITS

LABELLED_SPLITS = ("train", "val", "test")
LABEL_CONFLICTS = ("drop", "first")
# Upper bounds that keep a typo from turning into a silly request.
MAX_SEED = 2**63 - 1
MAX_COUNT = 2**31 - 1


def zip_member_limit(max_pixels):
    """The most uncompressed bytes a zip member may declare: 4 bytes a pixel plus 1 MiB.

    Four bytes a pixel is what an uncompressed RGBA encoding (BMP, TIFF) of
    the largest accepted image takes; no usable image file is larger, so a
    member beyond it is refused before a byte is inflated, and reading a
    member never holds more than this in memory (about as much as decoding
    the largest accepted image needs anyway).
    """
    return 4 * max_pixels + (1 << 20)


@dataclass(frozen=True)
class IngestSettings:
    """Everything that decides the shards' contents; saved in the manifest."""

    # (height, width) of every stored image.
    size: tuple = DEFAULT_SIZE
    # How an image is brought to `size`: stretch | crop | pad.
    fit: str = "stretch"
    # Seed of the permutation that assigns files to splits and shards.
    seed: int = 0
    # Validation and test share: a fraction (< 1) of each class, rounded to
    # the nearest whole image per class (halves round up), or a whole count
    # of images (>= 1) given exactly: split across the classes in proportion
    # to their sizes by largest remainder.
    val: float = 0.1
    test: float = 0.1
    # Images per shard file. Small enough that a worker holds little, large
    # enough that per-file overhead is negligible.
    shard_size: int = 1000
    # HDF5 filter on the images: none | lzf | gzip (see docs/shard-format.md).
    compression: str = "none"
    # Images with more pixels than this are skipped as decompression bombs.
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Use Pillow's reduced-scale JPEG decoding (same output size, ~2x faster).
    draft: bool = True
    # Identical files under different labels: "drop" keeps none of them,
    # "first" keeps the first labelled copy by name. Listed in the manifest
    # under "label_conflicts" either way.
    label_conflicts: str = "drop"
    # The classes to keep, in index order (--classes a,b,c); None keeps every
    # class found, sorted by name (dog, cat for Dogs vs. Cats).
    classes: tuple = None
    # Ignore the splits a pre-split input's folders give; split every
    # labelled image by `seed`, `val` and `test` instead.
    resplit: bool = False
    # Images whose fingerprints (ingest.fingerprint) differ in at most this
    # many of 64 bits are near-duplicates: one group, one split (unless the
    # input's own folders split them). Chosen from docs/benchmarks.md.
    # None (--near-distance off): no fingerprints, no groups, and a scan
    # that reads only each file's bytes and image header (no decode).
    near_distance: int = DEFAULT_DISTANCE

    def validate(self):
        """Raise UserError naming the first bad field and its value."""
        if (not isinstance(self.size, (tuple, list)) or len(self.size) != 2
                or not all(_is_int(side) and 8 <= side <= 4096 for side in self.size)):
            raise UserError(f"size must be (height, width), each 8 to 4096 pixels. Received: size={self.size!r}")
        if self.fit not in FITS:
            raise UserError(f"fit must be one of {FITS}. Received: fit={self.fit!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed must be a whole number from 0 to {MAX_SEED}. Received: seed={self.seed!r}")
        for name in ("val", "test"):
            problem = share_problem(getattr(self, name))
            if problem:
                raise UserError(f"{name} {problem}. Received: {name}={getattr(self, name)!r}")
        if self.val < 1 and self.test < 1 and self.val + self.test >= 1:
            raise UserError(f"val + test must leave images for training. Received: val={self.val}, test={self.test}")
        if not _is_int(self.shard_size) or self.shard_size < 1:
            raise UserError(f"shard_size must be at least 1. Received: shard_size={self.shard_size!r}")
        if self.compression not in COMPRESSIONS:
            raise UserError(f"compression must be one of {COMPRESSIONS}. Received: compression={self.compression!r}")
        if not _is_int(self.max_pixels) or self.max_pixels < 1:
            raise UserError(f"max_pixels must be positive. Received: max_pixels={self.max_pixels!r}")
        if self.label_conflicts not in LABEL_CONFLICTS:
            raise UserError(f"label_conflicts must be one of {LABEL_CONFLICTS}. "
                            f"Received: label_conflicts={self.label_conflicts!r}")
        if self.near_distance is not None and (not _is_int(self.near_distance)
                                               or not 0 <= self.near_distance <= MAX_DISTANCE):
            raise UserError(f"near_distance must be a whole number of bits from 0 to {MAX_DISTANCE}, or None (off). "
                            f"Received: near_distance={self.near_distance!r}")
        if self.classes is not None:
            names = list(self.classes)
            if (not names or not all(isinstance(n, str) and n.strip() == n and n for n in names)
                    or len(set(names)) != len(names)):
                raise UserError("classes must be distinct, non-empty class names (--classes a,b,c). "
                                f"Received: classes={self.classes!r}")

    def to_json(self):
        data = asdict(self)
        data["size"] = list(self.size)
        data["classes"] = None if self.classes is None else list(self.classes)
        return data


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def share_problem(value):
    """Why `value` is not a valid --val/--test share, or None if it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    if not math.isfinite(value):
        return "must be a finite number: a fraction in [0, 1) or a whole count"
    if value < 0:
        return "must not be negative: a fraction in [0, 1) or a whole count"
    if value >= 1 and value != int(value):
        return "must be a fraction in [0, 1) or a whole count (>= 1)"
    if value > MAX_COUNT:
        return f"must be a count of at most {MAX_COUNT:,}"
    return None


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: the files that make one shard file.

    `items` are (name, label, fingerprint, original height, original width):
    the last three from the scan (ingest.scan), 0 where it could not decode
    the file, stored beside each image in the shard. In the driver they wait
    on local disk (StoredItems); a worker gets them as SpecItems.
    """

    file: str
    split: str
    index: int
    items: tuple
    digest: str
    classes: tuple  # class names in index order, written into the shard


class _RowsCompare:
    """Equality and hashing by the rows a shard's item sequence yields, shared by SpecItems and StoredItems."""

    __slots__ = ()

    def __eq__(self, other):
        return tuple(self) == tuple(other)

    def __hash__(self):
        return hash(tuple(self))


class SpecItems(_RowsCompare):
    """A shard's (name, label, fingerprint, height, width) rows, kept as columns.

    What a shard task carries to its worker (a StoredItems pickles as one),
    and the rows of specs made from lists of items (`shard_specs`).
    Iterates, indexes and compares as the tuples would.
    """

    __slots__ = ("names", "labels", "extras")

    def __init__(self, rows):
        rows = list(rows)
        self.names = tuple(row[0] for row in rows)
        self.labels = np.array([row[1] for row in rows], dtype=np.int32)
        self.extras = np.array([row[2:] for row in rows], dtype=np.uint64).reshape(len(rows), 3)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        fingerprint, height, width = (int(v) for v in self.extras[i])
        return self.names[i], int(self.labels[i]), fingerprint, height, width

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return f"SpecItems({tuple(self)!r})"


class StoredItems(_RowsCompare):
    """A shard's rows kept on local disk until the shard is built (see SpecStore).

    Reads, iterates and compares as SpecItems does; pickles (to a worker
    process or a cluster) as a SpecItems of its rows, so a worker never
    needs the driver's disk.
    """

    __slots__ = ("_store", "_offset", "_length", "_count")

    def __init__(self, store, offset, length, count):
        self._store, self._offset, self._length, self._count = store, offset, length, count

    def rows(self):
        return self._store.read(self._offset, self._length)

    def __len__(self):
        return self._count

    def __getitem__(self, i):
        return self.rows()[i]

    def __iter__(self):
        return iter(self.rows())

    def __repr__(self):
        return f"StoredItems({self.rows()!r})"

    def __reduce__(self):
        return SpecItems, (self.rows(),)


class SpecStore:
    """Every shard's rows, pickled one after the other in an unnamed temporary file (ingest.catalogue)."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="kibble-specs-")
        self._size = 0

    def put(self, rows):
        data = pickle.dumps(tuple(rows), protocol=pickle.HIGHEST_PROTOCOL)
        os.pwrite(self._file.fileno(), data, self._size)
        items = StoredItems(self, self._size, len(data), len(rows))
        self._size += len(data)
        return items

    def read(self, offset, length):
        return pickle.loads(os.pread(self._file.fileno(), length, offset))


def _digest(*parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def plan_items(source, requested=None, exclusions=frozenset()):
    """(classes, FileList of the images to plan, [excluded]) from discovery's `source`.

    The FileList (ingest.catalogue) holds the images left after --classes
    and --exclude, in name order, their labels as class indices
    (UNLABELED -1); `excluded` lists the others ({"name", "reason"}), the
    --exclude ones first. The source's own list is released.
    """
    found, names = source.found, source.label_names
    rename, classes = class_order(source.class_names | set(names))
    classes = _requested_classes(classes, requested)
    index = {name: i for i, name in enumerate(classes)}
    # Discovery's label codes -> class index; a class not in --classes -> NOT_AN_ITEM.
    # Shifted by 2 for UNLABELED (-1) and NOT_AN_ITEM (-2), which stay.
    lookup = np.array([NOT_AN_ITEM, UNLABELED] + [index.get(rename[name], NOT_AN_ITEM) for name in names],
                      dtype=np.int16)  # classes <= MAX_CLASSES
    label = lookup[found.label + 2]
    class_excluded = [{"name": found.names[row],
                       "reason": f"class {rename[names[found.label[row]]]!r} is not in --classes"}
                      for row in rows_where((label == NOT_AN_ITEM) & (found.label >= 0)).tolist()]
    excluded = []
    if exclusions:
        for first, chunk in found.names.chunks():
            for row, name in enumerate(chunk, first):
                if label[row] != NOT_AN_ITEM and (name in exclusions or os.path.basename(name) in exclusions):
                    label[row] = NOT_AN_ITEM
                    excluded.append({"name": name, "reason": "listed in --exclude"})
    items = found.subset(label != NOT_AN_ITEM, label)
    return classes, items, excluded + class_excluded


def _requested_classes(classes, requested):
    if requested is not None:
        missing = [name for name in requested if name not in classes]
        if missing:
            raise UserError(f"--classes names {', '.join(map(repr, missing))}, not a class of this input; "
                            f"its classes are: {', '.join(classes)}. Received: --classes {','.join(requested)}")
        classes = list(requested)
    if len(classes) > MAX_CLASSES:
        raise UserError(f"{len(classes):,} classes found; at most {MAX_CLASSES:,} are supported")
    return classes


# Rows per part when a step must compare every file's digest or fingerprint
# with every other's: the files are cut into parts of about this many by
# the value compared, so only one part's copies are in memory at a time.
PART_ROWS = 1 << 14


def drop_duplicates(items, table, label_conflicts="drop"):
    """Keep one row of each distinct content; returns (kept: bool per row, duplicates, conflicts).

    `items` is the FileList the scan's `table` (ingest.scan.ScanTable) was
    made of. Rows the scan could not read are not kept (they are skipped).
    Copies under one label (or labelled and unlabelled copies) keep the
    labelled one, then the first by name; the rest are `duplicates`
    ({"name", "same_as"}). Copies under different labels are a conflict:
    nobody can tell which label is right, so with `label_conflicts="drop"`
    no labelled copy is kept, with "first" the first labelled copy by name
    is. Each conflict is listed as {"names", "labels", "kept"} with every
    labelled copy; unlabelled copies of it stay duplicates of the first.
    """
    kept = table.column("read")
    # Only the rows sharing their content with another are grouped: no
    # object per file when, as usual, nearly every file is unique.
    copied = _shared_digests(table, len(items))
    rows = sorted(copied)
    names = dict(zip(rows, items.names.take(rows)))
    kept[rows] = False
    groups = {}
    for row in sorted(rows, key=lambda row: (items.label[row] == UNLABELED, names[row])):
        groups.setdefault(copied[row], []).append(row)
    duplicates, conflicts = [], []
    for copies in groups.values():
        first = copies[0]
        labelled = [row for row in copies if items.label[row] != UNLABELED]
        if len({int(items.label[row]) for row in labelled}) > 1:
            keep = first if label_conflicts == "first" else None
            conflicts.append({"names": [names[row] for row in labelled],
                              "labels": [int(items.label[row]) for row in labelled],
                              "kept": names[keep] if keep is not None else None})
            if keep is not None:
                kept[keep] = True
            duplicates += [{"name": names[row], "same_as": names[first]}
                           for row in copies if items.label[row] == UNLABELED]
            continue
        kept[first] = True
        duplicates += [{"name": names[row], "same_as": names[first]} for row in copies[1:]]
    duplicates.sort(key=lambda entry: entry["name"])
    conflicts.sort(key=lambda entry: entry["names"])
    return kept, duplicates, conflicts


def _shared_digests(table, count):
    """{row: raw sha256} of the read rows whose digest another read row shares.

    One part of the digests' first byte range at a time: a part's digests
    and rows are all that is held, whatever the number of files.
    """
    parts = max(1, min(256, count // PART_ROWS))
    shared = {}
    for part in range(parts):
        low, high = 256 * part // parts, 256 * (part + 1) // parts
        digests, rows = [], []
        for start, records in table.chunks(("sha256", "read")):
            first = np.frombuffer(records["sha256"].tobytes(), dtype=np.uint8)[::32]
            mine = np.flatnonzero(records["read"] & (first >= low) & (first < high))
            digests.append(records["sha256"][mine])
            rows.append(mine + start)
        digests, rows = np.concatenate(digests), np.concatenate(rows)
        _, inverse, counts = np.unique(digests, return_inverse=True, return_counts=True)
        repeated = counts[inverse.reshape(-1)] > 1
        shared.update(zip(rows[repeated].tolist(), digests[repeated].tolist()))
    return shared


def near_duplicate_groups(items, table, kept, distance):
    """Groups of 2+ kept rows whose fingerprints lie within `distance` bits (and colours agree), linked pairwise.

    Each group is a list of rows in name order; groups are ordered by their
    first row, so the result depends on the input alone. Rows without a
    fingerprint (the scan could not decode them) belong to no group; with
    `distance` None (not looked for) there are no groups.
    """
    if distance is None:
        return []
    known = rows_where(kept & table.column("printed"))
    pairs = near_pairs(table.column("fingerprint", known), distance)
    if len(pairs):  # the colour check, for the candidate pairs alone
        first, second = table.take(known[pairs[:, 0]], "colour"), table.take(known[pairs[:, 1]], "colour")
        difference = np.abs(first.astype(np.float64) - second).mean(axis=1)
        pairs = pairs[difference <= MAX_COLOUR_DIFFERENCE]
    return [[int(known[i]) for i in members] for members in groups(len(known), pairs)]


def resolve_near_conflicts(items, near_groups, classes, label_conflicts="drop"):
    """The rows of near-duplicate groups carrying different labels to leave out; returns (rows, conflicts).

    Such a group is a likely label error, handled as identical files under
    different labels are (see `drop_duplicates`): with "drop" none of its
    labelled members is kept, with "first" those sharing the label of the
    first labelled member by name are. Unlabelled members stay. Each
    conflict is {"names", "labels" (class names), "kept" (names)}.
    """
    dropped, conflicts = set(), []
    for members in near_groups:
        labelled = [row for row in members if items.label[row] != UNLABELED]
        labels = [int(items.label[row]) for row in labelled]
        if len(set(labels)) < 2:
            continue
        names = items.names.take(labelled)
        keep = [i for i, label in enumerate(labels) if label == labels[0]] if label_conflicts == "first" else []
        dropped |= {row for i, row in enumerate(labelled) if i not in keep}
        conflicts.append({"names": names, "labels": [classes[label] for label in labels],
                          "kept": [names[i] for i in keep]})
    return dropped, conflicts


def describe_near_duplicates(near_groups, splits, items, classes):
    """The manifest's "near_duplicates": each group's members with their label and split.

    `split` is where the member went, None if it was left out (a likely
    label error); "crosses_splits" is True when the labelled members that
    were kept lie in more than one of train, val and test.
    """
    if not near_groups:
        return []
    order = list(splits)
    where = np.zeros(len(items), dtype=np.int8)  # 0: in no split, else 1 + its place in `order`
    for place, split in enumerate(order):
        where[splits[split]] = place + 1
    described = []
    for members in near_groups:
        rows = [{"name": name, "label": None if items.label[row] == UNLABELED else classes[items.label[row]],
                 "split": order[where[row] - 1] if where[row] else None}
                for row, name in zip(members, items.names.take(members))]
        held = {row["split"] for row in rows if row["split"] in LABELLED_SPLITS}
        described.append({"members": rows, "crosses_splits": len(held) > 1})
    return described


def _round_half_up(value):
    # A tolerance, so that 0.15 * 10 (1.4999999999999998 in floating point)
    # counts as the half it means.
    return int(math.floor(value + 0.5 + 1e-9))


def _largest_remainder(total, sizes, reverse_ties=False):
    """Split the whole number `total` over groups of `sizes`, in proportion, summing to `total` exactly.

    Each group gets the floor of its quota; the images left over go one each
    to the largest fractional parts, ties to the larger group, then to the
    earlier one (the later one with `reverse_ties`). A pure function of its
    inputs, so the plan stays fixed.
    """
    whole = sum(sizes)
    if not whole:
        return [0] * len(sizes)
    quotas = [total * size / whole for size in sizes]
    shares = [int(math.floor(quota)) for quota in quotas]
    tie = -1 if reverse_ties else 1
    order = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - shares[i]), -sizes[i], tie * i))
    for i in order[:total - sum(shares)]:
        shares[i] += 1
    return shares


def held_out_counts(settings, sizes, val=None, test=None):
    """([val per class], [test per class]) for classes of `sizes`.

    A fraction is taken of each class and rounded half up (0.1 of 25 cats is
    3, not Python's round-half-even 2). A count is an exact total, split
    across the classes by largest remainder; an exact tie goes to the
    earlier class for val and to the later one for test, so `--val 1
    --test 1` on two balanced classes holds one of each. `val`/`test`
    override the settings' shares (0 when a pre-split set gives that split).
    """
    val = settings.val if val is None else val
    test = settings.test if test is None else test

    def share(value, reverse_ties):
        if value >= 1:
            return _largest_remainder(int(value), sizes, reverse_ties)
        return [_round_half_up(value * size) for size in sizes]

    return share(val, False), share(test, True)


# Class names that mean Dogs vs. Cats, whatever their case or number.
_CAT_DOG = {"cat": "cat", "cats": "cat", "dog": "dog", "dogs": "dog"}
MAX_CLASSES = 32767  # labels are int16 at most (see shards.format.label_dtype)


def class_order(found):
    """({found name: class name}, [class names in index order]) for the names found.

    Sorted by name, Keras's convention, except Dogs vs. Cats (exactly a cat
    and a dog class, any case, "cats"/"dogs" too): ["dog", "cat"], so cat
    is 1 and dog 0 as the tutorial's figures need.
    """
    found = sorted(found)
    if found and {name.lower() for name in found} <= set(_CAT_DOG) \
            and {_CAT_DOG[name.lower()] for name in found} == {"cat", "dog"}:
        return {name: _CAT_DOG[name.lower()] for name in found}, ["dog", "cat"]
    return {name: name for name in found}, found


def index_classes(items, class_names, requested=None):
    """Class names to indices: returns (classes, items, excluded).

    `items` carry class names (None = unlabelled), `class_names` every class
    met (an empty class folder's too). `requested` (--classes) chooses and
    orders the classes; images of the others are returned in `excluded`
    ({"name", "reason"}) instead of `items`.
    """
    rename, classes = class_order(class_names | {item.label for item in items if item.label is not None})
    classes = _requested_classes(classes, requested)
    index = {name: i for i, name in enumerate(classes)}
    kept, excluded = [], []
    for item in items:
        if item.label is None:
            kept.append(Item(item.name, UNLABELED, item.split))
            continue
        name = rename[item.label]
        if name in index:
            kept.append(Item(item.name, index[name], item.split))
        else:
            excluded.append({"name": item.name, "reason": f"class {name!r} is not in --classes"})
    return classes, kept, excluded


def split_items(items, settings, classes, near_groups=(), leave_out=frozenset()):
    """split_rows for a list of Items: ({split: [items]}, [warnings]). Groups and `leave_out` by name."""
    index = {item.name: row for row, item in enumerate(items)}
    label = np.array([item.label for item in items], dtype=np.int32)
    split = np.array([SPLIT_CODES.index(item.split) for item in items], dtype=np.int8)
    rows_of = [[index[item.name] for item in members if item.name in index] for members in near_groups]
    left_out = {index[name] for name in leave_out if name in index}
    splits, warnings = split_rows(label, split, np.ones(len(items), bool), settings, classes, rows_of, left_out)
    return {name: [items[row] for row in rows.tolist()] for name, rows in splits.items()}, warnings


def split_rows(label, given, kept, settings, classes, near_groups=(), leave_out=frozenset()):
    """Stratified, seeded assignment of labelled `rows` to train/val/test.

    `label` (class index, UNLABELED -1) and `given` (the split the input
    gives, as SPLIT_CODES) are columns indexed by row; `kept` (bool per
    row) marks the candidates. Returns ({split: int32 array of rows in
    shuffled order}, [warnings]). Unlabelled rows go to "unlabeled" in name
    order. Rows carrying a split (a pre-split input) keep it unless
    `settings.resplit`; a held-out split the input does not give is taken
    from its train folder by the settings' share.

    `near_groups` (lists of rows, see `near_duplicate_groups`) go whole
    into one split. Within a class, the rows are shuffled by the seed as
    they always were; that order, with each group in the place of its first
    member and the rows in `leave_out` (likely label errors) taken out,
    gives the units; each unit in turn goes to validation if it fits in what
    validation still needs, else to test if it fits there, else to training.
    The counts stay exact unless only groups too large for what is left
    remain (a warning says so). The shuffle is drawn over every row of
    the class, those left out included, so that a group or a left-out image
    moves only the images near the split boundaries, not the whole split:
    without groups it is exactly the seeded split of before groups existed.
    """
    # Shuffles in place (Generator.shuffle draws exactly as .permutation
    # does), rows as int32: nothing here costs more than a few bytes a row.
    rng = np.random.default_rng(settings.seed)
    leave = np.array(sorted(leave_out), dtype=np.int32)

    def kept_of(part):
        return part[~np.isin(part, leave)] if len(leave) else part

    unlabeled = kept_of(rows_where(kept & (label == UNLABELED)))
    labelled = rows_where(kept & (label != UNLABELED))
    codes = given[labelled]
    has_split = not settings.resplit and bool(codes.any())
    splits = {name: [] for name in LABELLED_SPLITS}
    if has_split:
        present = {SPLIT_CODES[code] for code in np.unique(codes).tolist()}
        val, test = (0 if "val" in present else settings.val), (0 if "test" in present else settings.test)
        pool = labelled[(codes == SPLIT_CODES.index("train")) | (codes == 0)]
        for name in ("val", "test"):
            splits[name].append(kept_of(labelled[codes == SPLIT_CODES.index(name)]))
    else:
        val, test, pool = settings.val, settings.test, labelled
    del labelled, codes
    wanted = sum(int(share) for share in (val, test) if share >= 1)
    pool_labels = label[pool]
    in_pool = np.bincount(pool_labels[~np.isin(pool, leave)] if len(leave) else pool_labels,
                          minlength=len(classes))
    if wanted > int(in_pool.sum()):
        raise UserError(f"val={val:g} and test={test:g} ask for {wanted} images "
                        f"but only {int(in_pool.sum())} labelled images are left to split")
    # Highest index first: the order kibble always drew Dogs vs. Cats in
    # (cat, then dog), so the same seed still gives the same splits, and
    # exact-count ties still go to cats for val, to dogs for test.
    drawn = list(reversed(range(len(classes))))
    sizes = [int(in_pool[label_]) for label_ in drawn]
    n_vals, n_tests = held_out_counts(settings, sizes, val, test)
    group_of = {row: index for index, members in enumerate(near_groups) for row in members}
    short = []
    for label_, size, n_val, n_test in zip(drawn, sizes, n_vals, n_tests):
        mine = pool[pool_labels == label_]
        if n_val + n_test > size:
            raise UserError(
                f"val={val:g} and test={test:g} ask for {n_val + n_test} "
                f"{classes[label_]} images but only {size} exist")
        rng.shuffle(mine)
        shuffled = kept_of(mine)
        del mine
        left = {"val": n_val, "test": n_test}
        for split, part in _assign_units(shuffled, group_of, left).items():
            splits[split].append(part)
        short += [f"{split} holds {wanted - left[split]} of the {wanted} {classes[label_]!r} images asked for: "
                  "the near-duplicate groups left were too large to fit"
                  for split, wanted in (("val", n_val), ("test", n_test)) if left[split]]
    del pool, pool_labels
    for name in LABELLED_SPLITS:  # mix the classes within each split
        joined = np.concatenate(splits[name]) if splits[name] else np.empty(0, dtype=np.int32)
        splits[name] = None
        rng.shuffle(joined)
        splits[name] = joined
    splits["unlabeled"] = unlabeled
    counts = {split: np.bincount(label[splits[split]], minlength=len(classes)).tolist()
              for split in LABELLED_SPLITS}
    return splits, _small_class_warnings(counts, classes, settings, has_split, val, test) + short


def _assign_units(shuffled, group_of, left):
    """{split: rows} of one class's shuffled rows, cut into units (one per near-duplicate group, one per
    other row, in the order of each unit's first row) and each unit placed as `split_rows` says.

    `left` (what val and test still need) is updated.
    """
    grouped = [row for row in shuffled.tolist() if row in group_of] if group_of else []
    if not grouped:  # every unit one row: the first ones fill val, the next test
        n_val = min(left["val"], len(shuffled))
        n_test = min(left["test"], len(shuffled) - n_val)
        left["val"] -= n_val
        left["test"] -= n_test
        return {"val": shuffled[:n_val], "test": shuffled[n_val:n_val + n_test], "train": shuffled[n_val + n_test:]}
    members = {}
    for row in grouped:
        members.setdefault(group_of[row], []).append(row)
    placed = {name: array("i") for name in ("val", "test", "train")}
    for row in shuffled.tolist():
        group = group_of.get(row)
        if group is None:
            unit = (row,)
        elif members[group][0] == row:
            unit = members[group]
        else:
            continue  # placed with its group's first row
        split = next((name for name in ("val", "test") if len(unit) <= left[name]), "train")
        if split != "train":
            left[split] -= len(unit)
        placed[split].extend(unit)
    return {name: np.frombuffer(rows, dtype=np.int32) if len(rows) else np.empty(0, dtype=np.int32)
            for name, rows in placed.items()}


def _small_class_warnings(counts, classes, settings, given, val, test):
    """One line per class too small for its share of validation or test (or left no training image).

    `counts` are each labelled split's images per class index.
    """
    shares = {"val": val, "test": test}
    warnings = []
    for label, name in enumerate(classes):
        mine = {split: counts[split][label] for split in LABELLED_SPLITS}
        total = sum(mine.values())
        owed = []
        for split, share in shares.items():
            if mine[split]:
                continue
            if given and share == 0:  # the input's own folder: owed if that folder holds other classes
                if sum(counts[split]):
                    owed.append(split)
            # An exact count smaller than the number of classes leaves some
            # class out by design; a fraction, or a count that could reach
            # every class, is owed to each.
            elif share > 0 and (share < 1 or share >= len(classes)):
                owed.append(split)
        if total and (owed or not mine["train"]):
            where = "as its folders give" if given else f"val={settings.val:g}, test={settings.test:g}"
            short = " and ".join({"val": "validation", "test": "test"}[s] for s in owed) or "training"
            warnings.append(f"class {name!r} has {total} image(s): {mine['train']} train, {mine['val']} val, "
                            f"{mine['test']} test ({where}); too few for its share of {short}")
    return warnings


def class_counts(items, num_classes):
    """Images per class index of `items` (unlabelled ones not counted)."""
    counts = [0] * num_classes
    for item in items:
        if item.label != UNLABELED:
            counts[item.label] += 1
    return counts


def _pixel_settings(settings):
    # Only what changes a shard's contents goes into its digest, so a shard
    # stays reusable when, say, the conflict policy changes other shards.
    return {k: v for k, v in settings.to_json().items()
            if k not in ("seed", "val", "test", "shard_size", "label_conflicts", "classes", "resplit",
                         "near_distance")}


def _spec(split, index, rows, items, settings, classes, pixel_settings):
    return ShardSpec(file=f"{split}-{index:05d}.h5", split=split, index=index, items=items,
                     digest=_digest(SCHEMA_VERSION, pixel_settings, list(classes), split, rows),
                     classes=tuple(classes))


def shard_specs(splits, settings, classes):
    """Cut each split ({split: [items]}) into shards of `settings.shard_size` files, extras unknown (0)."""
    pixel_settings, specs = _pixel_settings(settings), []
    for split, items in splits.items():
        for index, start in enumerate(range(0, len(items), settings.shard_size)):
            rows = tuple((item.name, item.label, 0, 0, 0) for item in items[start:start + settings.shard_size])
            specs.append(_spec(split, index, rows, SpecItems(rows), settings, classes, pixel_settings))
    return specs


def plan_specs(splits, items, table, settings, classes):
    """Cut each split ({split: rows of `items`}) into shards of `settings.shard_size` files.

    The scan's `table` gives each row's fingerprint and original size (0
    when unknown). A shard's rows are built one shard at a time and kept on
    local disk (SpecStore) until the shard is built.
    """
    pixel_settings, specs, store = _pixel_settings(settings), [], SpecStore()
    for split, rows in splits.items():
        for index, start in enumerate(range(0, len(rows), settings.shard_size)):
            part = rows[start:start + settings.shard_size]
            found = table.take(part, ("fingerprint", "printed", "height", "width"))
            fingerprints = np.where(found["printed"], found["fingerprint"], 0).tolist()
            chunk = tuple(zip(items.names.take(part), items.label[part].tolist(), fingerprints,
                              found["height"].tolist(), found["width"].tolist()))
            specs.append(_spec(split, index, chunk, store.put(chunk), settings, classes, pixel_settings))
    return specs


def read_exclusions(path):
    """File names to leave out, one per line ('#' comments allowed)."""
    if path is None:
        return set()
    try:
        with open(path) as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
    except OSError as exc:
        raise UserError(f"cannot read exclude list {path}: {exc.strerror}") from None
    return {line for line in lines if line}
