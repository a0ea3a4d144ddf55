"""The manifest: `manifest.json` beside the shards, the contract between stages.

It lists every shard with its split, counts and sha256, the ingest settings,
every file that was skipped, excluded or dropped as a duplicate, and totals.
It is written last and atomically, so a folder with a manifest is complete.
"""
import json
import os
from dataclasses import dataclass

from shards.errors import ShardError, UserError
from shards.format import SCHEMA_VERSION, ShardReader, sha256_file
from shards.fsio import write_json_atomic  # noqa: F401 - re-exported for the stages

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test", "unlabeled")


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest; `data` is the JSON document, `folder` where it lives."""

    folder: str
    data: dict

    @property
    def path(self):
        return os.path.join(self.folder, MANIFEST_NAME)

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
        return sha256_file(self.path)

    def split_count(self, split):
        return self.data["splits"].get(split, {}).get("count", 0)

    def shards(self, split=None):
        """Shard entries (dicts) in their fixed order, optionally of one split."""
        return [s for s in self.data["shards"] if split is None or s["split"] == split]

    def shard_path(self, entry):
        return os.path.join(self.folder, entry["file"])


def load_manifest(folder):
    """Read `folder/manifest.json`; a UserError says to run ingest if absent."""
    folder = str(folder)
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isdir(folder):
        raise UserError(f"no shard folder at {folder}: run `ingest` first (or pass --data)")
    if not os.path.exists(path):
        raise UserError(f"no {MANIFEST_NAME} in {folder}: run `ingest` first (or pass --data)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc}); run `ingest --force` to rebuild") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"{path} has schema version {data.get('schema_version')}, this tool reads "
            f"{SCHEMA_VERSION}; run `ingest --force` to rebuild")
    return Manifest(folder=folder, data=data)


def check_shard(manifest, entry, checksum=True):
    """Raise ShardError if one shard disagrees with its manifest entry."""
    path = manifest.shard_path(entry)
    if not os.path.exists(path):
        raise ShardError(path, "listed in the manifest but missing; run `ingest` again")
    if checksum and sha256_file(path) != entry["sha256"]:
        raise ShardError(path, "sha256 differs from the manifest (file damaged or replaced)")
    height, width, _ = manifest.image_shape
    with ShardReader(path) as shard:
        found = {k: shard.attrs.get(k) for k in ("split", "height", "width", "count")}
        shape = tuple(shard.images.shape)
    expected = {"split": entry["split"], "height": height, "width": width, "count": entry["count"]}
    if found != expected or shape != (entry["count"], height, width, 3):
        raise ShardError(path, f"attributes {found} / shape {shape} do not match the manifest {expected}")


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
