"""The work of one Dask task: decode a shard's files and write the shard.

A plain function of plain arguments, so it runs the same in a thread, in a
local process or on a distributed worker, and can be tested without Dask.
"""
import contextlib
import json
import os
import zipfile

from ingest.image import BadImage, load_image
from shards.format import ShardReader, sha256_file, write_shard
from shards.errors import ShardError


def _existing(path, digest):
    """The finished shard at `path` if it was made from exactly this plan and is whole.

    Its own content checksum must hold: the manifest with the shard's sha256
    may never have been written (a crash just before it), so the plan
    attribute alone would keep a shard whose pixels were damaged since.
    """
    if not os.path.isfile(path):
        return None
    try:
        with ShardReader(path) as shard:
            if shard.attrs.get("plan") == digest:
                shard.verify_content()
                return {"count": shard.count, "cats": shard.attrs["cats"],
                        "dogs": shard.attrs["dogs"], "skipped": shard.skipped}
    except (ShardError, ValueError, TypeError):
        pass  # damaged, foreign or from an older kibble: rebuilt below
    return None


def build_shard(spec, source_path, source_kind, settings, out):
    """Write `out/spec.file` unless an identical one exists; return its summary.

    The summary is a small dict (file, split, count, cats, dogs, sha256,
    bytes, skipped, reused): no pixels travel back to the scheduler.
    """
    path = os.path.join(out, spec.file)
    summary = _existing(path, spec.digest)
    reused = summary is not None
    if not reused:
        skipped, written = [], {1: 0, 0: 0, -1: 0}
        with contextlib.ExitStack() as stack:
            archive = stack.enter_context(zipfile.ZipFile(source_path)) if source_kind == "zip" else None
            writer = stack.enter_context(write_shard(
                path, height=settings.size[0], width=settings.size[1], capacity=len(spec.items),
                compression=settings.compression,
                attrs={"split": spec.split, "index": spec.index, "fit": settings.fit,
                       "plan": spec.digest, "skipped": "[]"}))
            for name, label in spec.items:
                try:
                    data = archive.read(name) if archive else os.path.join(source_path, name)
                    image = load_image(data, settings.size, settings.fit, settings.max_pixels, settings.draft)
                except (BadImage, OSError, KeyError, zipfile.BadZipFile) as exc:
                    skipped.append({"name": name, "reason": str(exc)})
                    continue
                writer.append(image, label, name)
                written[label] += 1
            # Recorded inside the shard, so a resumed ingest still reports them.
            writer.attrs["skipped"] = json.dumps(skipped)
        summary = {"count": sum(written.values()), "cats": written[1], "dogs": written[0], "skipped": skipped}
    return {"file": spec.file, "split": spec.split, "index": spec.index, **summary,
            "sha256": sha256_file(path), "bytes": os.path.getsize(path), "reused": reused}
