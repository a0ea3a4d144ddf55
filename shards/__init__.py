"""The shard format: HDF5 files of fixed-size uint8 images plus a manifest.

Everything downstream of ingest reads data through this package. The format
is described in docs/shard-format.md.
"""
from shards.errors import ShardError, UserError
from shards.format import (
    SCHEMA_VERSION,
    ShardReader,
    open_h5,
    sha256_file,
    write_shard,
)
from shards.manifest import Manifest, load_manifest, verify_shards

__all__ = [
    "SCHEMA_VERSION",
    "Manifest",
    "ShardError",
    "ShardReader",
    "UserError",
    "load_manifest",
    "open_h5",
    "sha256_file",
    "verify_shards",
    "write_shard",
]
