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
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from ingest.fingerprint import DEFAULT_DISTANCE, MAX_DISTANCE, groups, near_pairs
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
    the file, stored beside each image in the shard.
    """

    file: str
    split: str
    index: int
    items: tuple
    digest: str
    classes: tuple  # class names in index order, written into the shard


class SpecItems:
    """A shard's (name, label, fingerprint, height, width) rows, kept as columns.

    The driver holds every shard's rows until the end of an ingest: a tuple
    of five Python objects a row costs about 170 bytes, these columns about
    20 beside the name. Iterates, indexes and compares as the tuples would.
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

    def __eq__(self, other):
        return tuple(self) == tuple(other)

    def __hash__(self):
        return hash(tuple(self))

    def __repr__(self):
        return f"SpecItems({tuple(self)!r})"


def _digest(*parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def content_keys(table):
    """(Digests, [skipped]) from the scan's table (ingest.scan.ScanTable)."""
    return Digests(table), table.skipped()


class Digests:
    """{name: raw sha256} of a ScanTable's files that were read, without a dict per file."""

    def __init__(self, table):
        self.table = table

    def get(self, name, default=None):
        row = self.table.row.get(name)
        if row is None or not self.table.columns["read"][row]:
            return default
        return self.table.columns["sha256"][row]

    def repeated(self, names):
        """The digests shared by two or more of `names`."""
        rows = self.table.rows(names)
        digests = self.table.columns["sha256"][rows[self.table.columns["read"][rows]]]
        unique, counts = np.unique(digests, return_counts=True)
        return set(unique[counts > 1].tolist())


def _repeated(items, hashes):
    if hasattr(hashes, "repeated"):
        return hashes.repeated([item.name for item in items])
    counts = Counter(hashes[item.name] for item in items if item.name in hashes)
    return {digest for digest, count in counts.items() if count > 1}


def drop_duplicates(items, hashes, label_conflicts="drop"):
    """Keep one item of each distinct content; returns (kept, duplicates, conflicts).

    Copies under one label (or labelled and unlabelled copies) keep the
    labelled one, then the first by name; the rest are `duplicates`
    ({"name", "same_as"}). Copies under different labels are a conflict:
    nobody can tell which label is right, so with `label_conflicts="drop"`
    no labelled copy is kept, with "first" the first labelled copy by name
    is. Each conflict is listed as {"names", "labels", "kept"} with every
    labelled copy; unlabelled copies of it stay duplicates of the first.
    """
    # Only the items sharing their content with another are grouped: no
    # list per file when, as usual, nearly every file is unique.
    repeated = _repeated(items, hashes)
    kept, copied = [], []
    for item in items:
        digest = hashes.get(item.name)
        if digest is not None:
            (copied if digest in repeated else kept).append(item)
    groups = {}
    for item in sorted(copied, key=lambda item: (item.label == UNLABELED, item.name)):
        groups.setdefault(hashes.get(item.name), []).append(item)
    duplicates, conflicts = [], []
    for copies in groups.values():
        first = copies[0]
        labelled = [item for item in copies if item.label != UNLABELED]
        if len({item.label for item in labelled}) > 1:
            keep = first if label_conflicts == "first" else None
            conflicts.append({"names": [item.name for item in labelled],
                              "labels": [item.label for item in labelled],
                              "kept": keep.name if keep else None})
            if keep:
                kept.append(keep)
            duplicates += [{"name": item.name, "same_as": first.name}
                           for item in copies if item.label == UNLABELED]
            continue
        kept.append(first)
        duplicates += [{"name": item.name, "same_as": first.name} for item in copies[1:]]
    kept.sort(key=lambda item: item.name)
    duplicates.sort(key=lambda entry: entry["name"])
    conflicts.sort(key=lambda entry: entry["names"])
    return kept, duplicates, conflicts


def near_duplicate_groups(items, table, distance):
    """Groups of 2+ `items` whose fingerprints lie within `distance` bits (and colours agree), linked pairwise.

    Each group is a list of items in name order; groups are ordered by their
    first name, so the result depends on the input alone. Items without a
    fingerprint (the scan could not decode them) belong to no group; with
    `distance` None (not looked for) there are no groups.
    """
    if distance is None:
        return []
    columns = table.columns
    known = sorted((item for item in items if item.name in table.row and columns["printed"][table.row[item.name]]),
                   key=lambda item: item.name)
    rows = table.rows([item.name for item in known])
    fps, colours = columns["fingerprint"][rows], columns["colour"][rows]
    return [[known[i] for i in members] for members in groups(len(known), near_pairs(fps, distance, colours))]


def resolve_near_conflicts(items, near_groups, classes, label_conflicts="drop"):
    """Take near-duplicate groups carrying different labels out of `items`; returns (kept, conflicts).

    Such a group is a likely label error, handled as identical files under
    different labels are (see `drop_duplicates`): with "drop" none of its
    labelled members is kept, with "first" those sharing the label of the
    first labelled member by name are. Unlabelled members stay. Each
    conflict is {"names", "labels" (class names), "kept" (names)}.
    """
    dropped, conflicts = set(), []
    for members in near_groups:
        labelled = [item for item in members if item.label != UNLABELED]
        if len({item.label for item in labelled}) < 2:
            continue
        keep = [item.name for item in labelled if item.label == labelled[0].label] if label_conflicts == "first" else []
        dropped |= {item.name for item in labelled} - set(keep)
        conflicts.append({"names": [item.name for item in labelled],
                          "labels": [classes[item.label] for item in labelled], "kept": keep})
    return [item for item in items if item.name not in dropped], conflicts


def describe_near_duplicates(near_groups, splits, classes):
    """The manifest's "near_duplicates": each group's members with their label and split.

    `split` is where the member went, None if it was left out (a likely
    label error); "crosses_splits" is True when the labelled members that
    were kept lie in more than one of train, val and test.
    """
    where = {item.name: split for split, members in splits.items() for item in members}
    described = []
    for members in near_groups:
        rows = [{"name": item.name, "label": None if item.label == UNLABELED else classes[item.label],
                 "split": where.get(item.name)} for item in members]
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
    if requested is not None:
        missing = [name for name in requested if name not in classes]
        if missing:
            raise UserError(f"--classes names {', '.join(map(repr, missing))}, not a class of this input; "
                            f"its classes are: {', '.join(classes)}. Received: --classes {','.join(requested)}")
        classes = list(requested)
    if len(classes) > MAX_CLASSES:
        raise UserError(f"{len(classes):,} classes found; at most {MAX_CLASSES:,} are supported")
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
    """Stratified, seeded assignment of labelled items to train/val/test.

    Returns ({split: [items in shuffled order]}, [warnings]). Unlabelled
    items go to "unlabeled" in name order. Items carrying a split (a
    pre-split input) keep it unless `settings.resplit`; a held-out split the
    input does not give is taken from its train folder by the settings'
    share.

    `near_groups` (lists of items, see `near_duplicate_groups`) go whole
    into one split. Within a class, the images are shuffled by the seed as
    they always were; that order, with each group in the place of its first
    member and the names in `leave_out` (likely label errors) taken out,
    gives the units; each unit in turn goes to validation if it fits in what
    validation still needs, else to test if it fits there, else to training.
    The counts stay exact unless only groups too large for what is left
    remain (a warning says so). The shuffle is drawn over every image of
    the class, those left out included, so that a group or a left-out image
    moves only the images near the split boundaries, not the whole split:
    without groups it is exactly the seeded split of before groups existed.
    """
    rng = np.random.default_rng(settings.seed)
    labelled = [item for item in items if item.label != UNLABELED]
    given = not settings.resplit and any(item.split for item in labelled)
    splits = {name: [] for name in LABELLED_SPLITS}
    if given:
        present = {item.split for item in labelled}
        val, test = (0 if "val" in present else settings.val), (0 if "test" in present else settings.test)
        pool = [item for item in labelled if item.split in ("train", None)]
        for item in labelled:
            if item.split in ("val", "test"):
                splits[item.split].append(item)
    else:
        val, test, pool = settings.val, settings.test, labelled
    for name in ("val", "test"):
        splits[name] = [item for item in splits[name] if item.name not in leave_out]
    wanted = sum(int(share) for share in (val, test) if share >= 1)
    kept = [item for item in pool if item.name not in leave_out]
    if wanted > len(kept):
        raise UserError(f"val={val:g} and test={test:g} ask for {wanted} images "
                        f"but only {len(kept)} labelled images are left to split")
    members = [[item for item in pool if item.label == label] for label in range(len(classes))]
    # Highest index first: the order kibble always drew Dogs vs. Cats in
    # (cat, then dog), so the same seed still gives the same splits, and
    # exact-count ties still go to cats for val, to dogs for test.
    drawn = list(reversed(range(len(classes))))
    sizes = [sum(item.name not in leave_out for item in members[label]) for label in drawn]
    n_vals, n_tests = held_out_counts(settings, sizes, val, test)
    group_of = {item.name: index for index, members in enumerate(near_groups) for item in members}
    short = []
    for label, size, n_val, n_test in zip(drawn, sizes, n_vals, n_tests):
        mine = members[label]
        if n_val + n_test > size:
            raise UserError(
                f"val={val:g} and test={test:g} ask for {n_val + n_test} "
                f"{classes[label]} images but only {size} exist")
        shuffled = [mine[i] for i in rng.permutation(len(mine))]
        left = {"val": n_val, "test": n_test}
        for unit in _units([item for item in shuffled if item.name not in leave_out], group_of):
            split = next((name for name in ("val", "test") if len(unit) <= left[name]), "train")
            if split != "train":
                left[split] -= len(unit)
            splits[split] += unit
        short += [f"{split} holds {wanted - left[split]} of the {wanted} {classes[label]!r} images asked for: "
                  "the near-duplicate groups left were too large to fit"
                  for split, wanted in (("val", n_val), ("test", n_test)) if left[split]]
    for name in LABELLED_SPLITS:  # mix the classes within each split
        order = rng.permutation(len(splits[name]))
        splits[name] = [splits[name][i] for i in order]
    splits["unlabeled"] = [item for item in items if item.label == UNLABELED and item.name not in leave_out]
    return splits, _small_class_warnings(splits, classes, settings, given, val, test) + short


def _units(items, group_of):
    """`items` cut into the units a split moves whole: one per near-duplicate group, one per other item.

    In the order of each unit's first item, so that with no groups the
    units are the items themselves, in their order.
    """
    units, index = [], {}
    for item in items:
        group = group_of.get(item.name)
        if group is None:
            units.append([item])
        elif group in index:
            units[index[group]].append(item)
        else:
            index[group] = len(units)
            units.append([item])
    return units


def _small_class_warnings(splits, classes, settings, given, val, test):
    """One line per class too small for its share of validation or test (or left no training image)."""
    counts = {split: class_counts(splits[split], len(classes)) for split in LABELLED_SPLITS}
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


def shard_specs(splits, settings, classes, table=None):
    """Cut each split into shards of `settings.shard_size` files.

    `table` (ingest.scan.ScanTable) gives each item's fingerprint and
    original size (0 when unknown).
    """
    # Only what changes a shard's contents goes into its digest, so a shard
    # stays reusable when, say, the conflict policy changes other shards.
    pixel_settings = {k: v for k, v in settings.to_json().items()
                      if k not in ("seed", "val", "test", "shard_size", "label_conflicts", "classes", "resplit",
                                   "near_distance")}
    specs = []
    for split, items in splits.items():
        for index, start in enumerate(range(0, len(items), settings.shard_size)):
            chunk = tuple((item.name, item.label, *(table.extras(item.name) if table else (0, 0, 0)))
                          for item in items[start:start + settings.shard_size])
            specs.append(ShardSpec(
                file=f"{split}-{index:05d}.h5", split=split, index=index, items=SpecItems(chunk),
                digest=_digest(SCHEMA_VERSION, pixel_settings, list(classes), split, chunk),
                classes=tuple(classes)))
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


def apply_exclusions(items, excluded):
    """Drop items whose relative name or base name is listed in `excluded`.

    Returns (kept items, [{"name", "reason"}] of the dropped ones).
    """
    kept, dropped = [], []
    for item in items:
        base = os.path.basename(item.name)
        (dropped if item.name in excluded or base in excluded else kept).append(item)
    return kept, [{"name": item.name, "reason": "listed in --exclude"} for item in dropped]
