"""The manifest: `manifest.json` beside the shards, the contract between stages.

It lists every shard with its split, counts and sha256, the ingest settings,
every file that was skipped, excluded or dropped as a duplicate, and totals.
It is written last and atomically, so a folder with a manifest is complete.
"""
import json
import os
import re
from dataclasses import dataclass

from shards.errors import ShardError, UserError
from shards.format import SCHEMA_VERSION, ShardReader, sha256_file
from shards.fsio import LOCK_NAME, TEMP_FILE, inside
from shards.fsio import write_json_atomic  # noqa: F401 - re-exported for the stages
from shards import storage

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test", "unlabeled")


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest; `data` is the JSON document, `folder` where it lives."""

    folder: str
    data: dict

    @property
    def path(self):
        return storage.join(self.folder, MANIFEST_NAME)

    @property
    def settings(self):
        return self.data["settings"]

    @property
    def image_shape(self):
        """(height, width, 3) of every image in these shards."""
        height, width = self.settings["size"]
        return (height, width, 3)

    @property
    def checksum(self):
        """sha256 of the manifest file itself: names this exact data set."""
        return storage.sha256(self.path)

    def split_count(self, split):
        return self.data["splits"].get(split, {}).get("count", 0)

    @property
    def classes(self):
        """Class names in index order: label i is classes[i]."""
        return list(self.data["classes"])

    @property
    def num_classes(self):
        return len(self.data["classes"])

    def class_counts(self, split):
        """Images per class index in `split` (zeros for a split the folder lacks)."""
        info = self.data["splits"].get(split)
        return list(info["class_counts"]) if info else [0] * self.num_classes

    def shards(self, split=None):
        """Shard entries (dicts) in their fixed order, optionally of one split."""
        return [s for s in self.data["shards"] if split is None or s["split"] == split]

    def shard_path(self, entry):
        # Checked again at each use: a symlink may have been planted since loading.
        if storage.is_url(self.folder):
            return storage.inside_url(self.folder, entry["file"], f"{storage.public(self.path)}: shard file")
        return inside(self.folder, entry["file"], f"{self.path}: shard file")


def load_manifest(folder):
    """Read and validate `folder/manifest.json`; a UserError says what is wrong.

    Absent, unreadable or malformed (a wrong type, a missing key, a shard
    file that is not a shard name or points outside `folder`): one
    UserError naming the field, never a KeyError or TypeError later.
    """
    folder = storage.local_path(str(folder))
    if storage.is_url(folder):
        return _load_url(folder)
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isdir(folder):
        raise UserError(f"no shard folder at {folder}: run `ingest` first (or pass --data)")
    if not os.path.lexists(path):
        raise UserError(f"no {MANIFEST_NAME} in {folder}: run `ingest` first (or pass --data)")
    if not os.path.isfile(path):  # a FIFO or a device would block or never end
        raise UserError(f"{path} is not a regular file; run `ingest --force` to rebuild")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"{path} is not readable JSON ({_short(exc)}); run `ingest --force` to rebuild") from None
    _validate(data, folder, path)
    return Manifest(folder=folder, data=data)


def _load_url(folder):
    """load_manifest for a folder in object storage: the same checks, read through fsspec."""
    path = storage.join(folder, MANIFEST_NAME)
    shown = storage.public(path)
    if not storage.exists(path):
        raise UserError(f"no {MANIFEST_NAME} at {storage.public(folder)}: run `ingest --out "
                        f"{storage.public(folder)}` first (or pass another --data)")
    try:
        data = json.loads(storage.read_bytes(path))
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{shown} is not readable JSON ({_short(exc)}); run `ingest --force` to rebuild") from None
    _validate(data, folder, shown)
    return Manifest(folder=folder, data=data)


def _short(value, limit=60):
    text = str(value).splitlines()[0] if str(value) else type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class _Schema:
    """Type checks of manifest fields, each failure one UserError naming the field."""

    def __init__(self, path):
        self.path = path

    def fail(self, field, problem):
        raise UserError(f"{self.path}: {field} {problem}; run `ingest --force` to rebuild it")

    def found(self, value):
        return "null" if value is None else f"{type(value).__name__} {_short(json.dumps(value), 40)}"

    def get(self, obj, key, field, kind):
        """obj[key], after checking it is present and of `kind`."""
        if key not in obj:
            self.fail(field, "is missing")
        return self.check(obj[key], field, kind)

    def check(self, value, field, kind):
        ok = {
            "object": lambda v: isinstance(v, dict),
            "list": lambda v: isinstance(v, list),
            "text": lambda v: isinstance(v, str),
            "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNT,
            "side": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE,
            "sha256": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
            "flag": lambda v: isinstance(v, bool),
            "text or null": lambda v: v is None or isinstance(v, str),
        }[kind]
        if not ok(value):
            self.fail(field, f"must be {_KINDS[kind]}, found {self.found(value)}")
        return value


# Bounds that no real ingest reaches; larger values are edits or damage.
MAX_COUNT = 2 ** 53
MAX_SIDE = 4096  # ingest's --size limit
_KINDS = {"object": "a JSON object", "list": "a list", "text": "a string",
          "count": "a whole number >= 0", "side": f"a whole number of pixels in 1..{MAX_SIDE}",
          "sha256": "64 lowercase hex digits", "flag": "true or false", "text or null": "a string or null"}
_COUNTS = ("count",)
_TOTALS = ("images", "shards", "bytes", "skipped", "excluded", "duplicates", "label_conflicts")
_LISTS = ("skipped", "excluded", "duplicates", "label_conflicts")
# The near-duplicate section (see docs/shard-format.md): absent from manifests
# written before it existed (they still load), all of it or none.
_NEAR_LISTS = ("near_duplicates", "near_duplicate_conflicts")
_NEAR_TOTALS = ("near_duplicate_groups", "near_duplicate_images", "near_duplicate_groups_crossing_splits",
                "near_duplicate_conflicts")


def _validate(data, folder, path):
    schema = _Schema(path)
    schema.check(data, "the document", "object")
    version = data.get("schema_version")
    if type(version) is int and 0 < version < SCHEMA_VERSION:
        raise UserError(f"{path} was written by an earlier kibble (shard schema version {version}, this tool "
                        f"reads {SCHEMA_VERSION}, which records class names); ingest the images again with "
                        "`ingest --force`")
    if type(version) is not int or version != SCHEMA_VERSION:  # not 1.0, not true
        raise UserError(f"{path} has schema version {_short(json.dumps(version), 40)}, this tool reads "
                        f"{SCHEMA_VERSION}; run `ingest --force` to rebuild")
    schema.get(data, "plan", "plan", "text")
    settings = schema.get(data, "settings", "settings", "object")
    size = schema.get(settings, "size", "settings.size", "list")
    if len(size) != 2:
        schema.fail("settings.size", f"must be [height, width], found {schema.found(size)}")
    for i, side in enumerate(size):
        schema.check(side, f"settings.size[{i}]", "side")
    schema.get(settings, "fit", "settings.fit", "text")
    schema.get(data, "source", "source", "object")
    for key in _LISTS:
        schema.get(data, key, key, "list")
    classes = _validate_classes(schema, schema.get(data, "classes", "classes", "list"))
    shards = _validate_shards(schema, schema.get(data, "shards", "shards", "list"), folder, len(classes))
    _validate_splits(schema, schema.get(data, "splits", "splits", "object"), shards, len(classes))
    totals = schema.get(data, "totals", "totals", "object")
    for key in _TOTALS:
        schema.get(totals, key, f"totals.{key}", "count")
    expected = {"images": sum(e["count"] for e in shards), "shards": len(shards),
                "bytes": sum(e["bytes"] for e in shards), **{key: len(data[key]) for key in _LISTS}}
    for key, value in expected.items():
        if totals[key] != value:
            schema.fail(f"totals.{key}", f"is {totals[key]} but the manifest lists {value}")
    _validate_near_duplicates(schema, data, totals)


def _validate_near_duplicates(schema, data, totals):
    """The near-duplicate lists and their totals, when the manifest has them (all or none)."""
    present = [key for key in _NEAR_LISTS if key in data] + [f"totals.{key}" for key in _NEAR_TOTALS if key in totals]
    if not present:
        return
    for key in _NEAR_LISTS:
        schema.get(data, key, key, "list")
    for key in _NEAR_TOTALS:
        schema.get(totals, key, f"totals.{key}", "count")
    groups = data["near_duplicates"]
    for i, group in enumerate(groups):
        field = f"near_duplicates[{i}]"
        schema.check(group, field, "object")
        members = schema.get(group, "members", f"{field}.members", "list")
        if len(members) < 2:
            schema.fail(f"{field}.members", f"must list 2 or more images, found {len(members)}")
        for j, member in enumerate(members):
            schema.check(member, f"{field}.members[{j}]", "object")
            schema.get(member, "name", f"{field}.members[{j}].name", "text")
            for key in ("label", "split"):
                schema.get(member, key, f"{field}.members[{j}].{key}", "text or null")
        schema.get(group, "crosses_splits", f"{field}.crosses_splits", "flag")
    expected = {"near_duplicate_groups": len(groups),
                "near_duplicate_images": sum(len(g["members"]) for g in groups),
                "near_duplicate_groups_crossing_splits": sum(g["crosses_splits"] for g in groups),
                "near_duplicate_conflicts": len(data["near_duplicate_conflicts"])}
    for key, value in expected.items():
        if totals[key] != value:
            schema.fail(f"totals.{key}", f"is {totals[key]} but the manifest lists {value}")


def _validate_classes(schema, classes):
    if not classes:
        schema.fail("classes", "must name at least one class, found []")
    for i, name in enumerate(classes):
        schema.check(name, f"classes[{i}]", "text")
    if len(set(classes)) != len(classes):
        schema.fail("classes", f"names a class twice: {_short(json.dumps(classes), 60)}")
    return classes


def _class_counts(schema, obj, field, num_classes, bounded=True):
    """obj["class_counts"]: one count per class, summing to at most obj["count"] if `bounded`."""
    counts = schema.get(obj, "class_counts", f"{field}.class_counts", "list")
    if len(counts) != num_classes:
        schema.fail(f"{field}.class_counts", f"must hold one count per class ({num_classes}), found {len(counts)}")
    for i, value in enumerate(counts):
        schema.check(value, f"{field}.class_counts[{i}]", "count")
    if bounded and sum(counts) > obj["count"]:
        schema.fail(field, f"has class_counts summing to {sum(counts)}, above its count ({obj['count']})")
    return counts


def _validate_shards(schema, shards, folder, num_classes):
    seen = set()
    for i, entry in enumerate(shards):
        field = f"shards[{i}]"
        schema.check(entry, field, "object")
        name = schema.get(entry, "file", f"{field}.file", "text")
        # Checked first and on its own: a name leading out of the folder is
        # refused before anything could open, replace or delete it.
        (storage.inside_url if storage.is_url(folder) else inside)(folder, name, f"{schema.path}: {field}.file")
        split = schema.get(entry, "split", f"{field}.split", "text")
        if split not in SPLITS:
            schema.fail(f"{field}.split", f"must be one of {', '.join(SPLITS)}, found {schema.found(split)}")
        index = schema.get(entry, "index", f"{field}.index", "count")
        if name != shard_file_name(split, index):
            schema.fail(f"{field}.file", f"must be {shard_file_name(split, index)!r} "
                                         f"(split-NNNNN.h5 of its split and index), found {name!r}")
        if name in seen:
            schema.fail(f"{field}.file", f"{name!r} is listed twice")
        seen.add(name)
        for key in (*_COUNTS, "bytes"):
            schema.get(entry, key, f"{field}.{key}", "count")
        _class_counts(schema, entry, field, num_classes)
        schema.get(entry, "sha256", f"{field}.sha256", "sha256")
    return shards


def _validate_splits(schema, splits, shards, num_classes):
    for split, info in splits.items():
        field = f"splits.{split}"
        if split not in SPLITS:
            schema.fail("splits", f"has an unknown split {split!r} (known: {', '.join(SPLITS)})")
        schema.check(info, field, "object")
        for key in _COUNTS:
            schema.get(info, key, f"{field}.{key}", "count")
        # Not bounded here: the split's count and class counts are each compared
        # with its shards' below, which names the field that is off.
        _class_counts(schema, info, field, num_classes, bounded=False)
        files = schema.get(info, "shards", f"{field}.shards", "list")
        mine = [e for e in shards if e["split"] == split]
        if files != [e["file"] for e in mine]:
            schema.fail(f"{field}.shards", f"does not list the same files as the {split} entries of \"shards\"")
        for key in _COUNTS:
            total = sum(e[key] for e in mine)
            if info[key] != total:
                schema.fail(f"{field}.{key}", f"is {info[key]} but its shards hold {total}")
        total = [sum(counts) for counts in zip(*(e["class_counts"] for e in mine))] or [0] * num_classes
        if info["class_counts"] != total:
            schema.fail(f"{field}.class_counts", f"is {info['class_counts']} but its shards hold {total}")
    for entry in shards:
        if entry["split"] not in splits:
            schema.fail("splits", f"lacks the split {entry['split']!r} of shard {entry['file']}")


def shard_file_name(split, index):
    """The file name of shard `index` of `split`: train-00000.h5."""
    return f"{split}-{index:05d}.h5"


def check_shard(manifest, entry, checksum=True):
    """Raise ShardError if one shard disagrees with its manifest entry.

    Without `checksum` only the cheap checks run (size on disk, attributes,
    shape); with it, the file's sha256 is compared too.
    """
    path = manifest.shard_path(entry)
    if storage.is_url(path):
        if not storage.exists(path):
            raise ShardError(storage.public(path), "listed in the manifest but missing; run `ingest` again")
    elif not os.path.lexists(path):
        raise ShardError(path, "listed in the manifest but missing; run `ingest` again")
    elif not os.path.isfile(path):
        raise ShardError(path, "is not a regular file; remove it and run `ingest` again")
    if checksum and storage.sha256(path) != entry["sha256"]:
        raise ShardError(storage.public(path), "sha256 differs from the manifest (file damaged or replaced)")
    size = storage.size(path)
    if size != entry["bytes"]:
        raise ShardError(path, f"holds {size} bytes, the manifest says {entry['bytes']} (file damaged or replaced)")
    height, width, _ = manifest.image_shape
    with ShardReader(path) as shard:
        found = {k: shard.attrs.get(k) for k in ("split", "height", "width", "count")}
        shape = tuple(shard.images.shape)
        classes, counts = shard.classes, shard.class_counts
    if found["split"] != entry["split"]:
        raise ShardError(path, f"is a shard of the {found['split']!r} split, the manifest lists it as "
                               f"{entry['split']!r} (a shard copied from elsewhere?); run `ingest` again")
    expected = {"split": entry["split"], "height": height, "width": width, "count": entry["count"]}
    if found != expected or shape != (entry["count"], height, width, 3):
        raise ShardError(path, f"attributes {found} / shape {shape} do not match the manifest {expected}")
    if classes != manifest.classes or counts != entry["class_counts"]:
        raise ShardError(path, f"classes {classes} / class_counts {counts} do not match the manifest "
                               f"({manifest.classes} / {entry['class_counts']}); run `ingest` again")


def verify_shards(manifest, splits=None, checksum=True):
    """Check every shard (of `splits`, default all); return a list of ShardErrors."""
    problems = []
    for entry in manifest.shards():
        if splits is not None and entry["split"] not in splits:
            continue
        try:
            check_shard(manifest, entry, checksum=checksum)
        except ShardError as exc:
            problems.append(exc)
    return problems


def unlisted_files(manifest):
    """(shard-like, other) names in the shard folder that the manifest does not list.

    Shard-like means an HDF5 file (`.h5`, `.hdf5`): one a user may believe is
    part of the data while every stage ignores it. The lock file and
    temporary files of a running or killed writer are neither.
    """
    listed = {MANIFEST_NAME, LOCK_NAME, *(entry["file"] for entry in manifest.shards())}
    shard_like, other = [], []
    names = storage.list_names(manifest.folder) if storage.is_url(manifest.folder) else os.listdir(manifest.folder)
    for name in sorted(names):
        if name in listed or TEMP_FILE.match(name):
            continue
        (shard_like if name.lower().endswith((".h5", ".hdf5")) else other).append(name)
    return shard_like, other
