"""Ingest: stream image files through Dask into shuffled HDF5 shards."""
from ingest.image import BadImage, load_image, parse_size
from ingest.plan import IngestSettings
from ingest.run import ingest

__all__ = ["BadImage", "IngestSettings", "ingest", "load_image", "parse_size"]
