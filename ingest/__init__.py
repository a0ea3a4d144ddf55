"""Ingest: stream image files through Dask into shuffled HDF5 shards.

The decoder it calls for every file, `load_image`, is in shards.image.
"""
from ingest.plan import IngestSettings
from ingest.run import ingest

__all__ = ["IngestSettings", "ingest"]
