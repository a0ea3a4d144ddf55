"""`ingest`: image folder -> HDF5 shards and manifest.json."""
import os
import sys

import click

from shards.image import DEFAULT_MAX_PIXELS, FITS
from ingest.fingerprint import DEFAULT_DISTANCE, MAX_DISTANCE
from ingest.plan import LABEL_CONFLICTS, MAX_SEED
from kibble.group import say
from kibble.options import (DEFAULT_SHARDS, FolderOrURL, LocalFolder, NumberOrWord, class_list, input_location,
                            seed_option, share_option, size_option)
from shards.format import COMPRESSIONS


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(), callback=input_location)
@click.option("--out", default=DEFAULT_SHARDS, show_default=True, type=FolderOrURL(),
              help="Folder for the shards and manifest.json, or a URL (s3://bucket/shards, gs://...): "
                   "built in --staging, then uploaded, manifest last; a re-run uploads only what is "
                   "missing or wrong.")
@click.option("--staging", type=LocalFolder(), default=None,
              help="With a URL --out: local folder the shards are built in before upload, kept afterwards "
                   "(with a tcp:// --scheduler the workers build them; it keeps only the upload record). "
                   "Default: one under the system's temporary folder, removed once uploaded.")
@size_option
@click.option("--fit", type=click.Choice(FITS), default=FITS[0], show_default=True,
              help="stretch: plain resize; crop: centre crop to the aspect; pad: letterbox.")
@seed_option(MAX_SEED, "Seed of the split and shard shuffle.")
@share_option("val", "Validation")
@share_option("test", "Test")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Images per shard file.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default=COMPRESSIONS[0], show_default=True,
              help="HDF5 compression of the images (see docs/shard-format.md).")
@click.option("--scheduler", default="processes", show_default=True,
              help="processes | threads | sync, or a dask.distributed address (tcp://host:8786).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local worker count (default: every core).")
@click.option("--shared-disk", is_flag=True,
              help="With a tcp:// --scheduler: every Dask worker sees INPUT and --out at the same paths as this "
                   "machine (a network file system). Without it, both must be URLs.")
@click.option("--exclude", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File listing names to leave out, one per line.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
              help="Skip images with more pixels than this (decompression bombs).")
@click.option("--label-conflicts", type=click.Choice(LABEL_CONFLICTS), default=LABEL_CONFLICTS[0],
              show_default=True,
              help="Identical files (cat.1.jpg = dog.9.jpg) or near-duplicates under different labels: drop keeps none, "
                   "first keeps the first by name. Listed in manifest.json either way.")
@click.option("--classes", default=None, callback=class_list, metavar="A,B,...",
              help="Classes to keep, in index order (default: every class, sorted by name; "
                   "Dogs vs. Cats: dog,cat). Images of other classes are listed as excluded.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="FILE",
              help="CSV of image paths (relative to INPUT) and labels, for sets whose layout carries none; "
                   "images it does not name are excluded (details above).")
@click.option("--near-distance", type=NumberOrWord("off", None, 0, MAX_DISTANCE, "bits"),
              default=str(DEFAULT_DISTANCE), show_default=True, metavar="0..%d|off" % MAX_DISTANCE,
              help="Images whose 64-bit fingerprints differ in at most this many bits are near-duplicates: "
                   "kept in one split; under different labels, handled as --label-conflicts says. "
                   "off: do not look for them (clean data; the scan then reads only each file's bytes and "
                   "header, no decode: a faster ingest).")
@click.option("--resplit", is_flag=True,
              help="Ignore the train/validation/test folders of a pre-split input; split by --seed, --val, --test.")
@click.option("--strict", is_flag=True, help="Fail instead of skipping files that cannot be used.")
@click.option("--force", is_flag=True, help="Rebuild even if --out already holds a complete ingest.")
@click.pass_context
def ingest(ctx, input_path, out, staging, size, fit, seed, val, test, shard_size, compression, scheduler,
           workers, shared_disk, exclude, max_pixels, label_conflicts, classes, labels_file, near_distance, resplit, strict,
           force):
    """Decode, resize and shuffle every image of INPUT into HDF5 shards.

    INPUT is a folder (or zip) of one sub-folder per class, images at any
    depth inside (INPUT/<class>/**/<image>); pre-split folders
    INPUT/{train,validation|val|valid,test}/<class>/..., whose splits are kept
    unless --resplit (near-duplicate groups that cross them are reported);
    or files named <class>.<n>.<ext> like Kaggle's train/
    folder (or its parent holding train/ and test1/, unlabelled). JPEG, PNG,
    WebP, BMP, GIF and TIFF are read. Classes are sorted by name (Dogs vs.
    Cats: dog = 0, cat = 1). Near-duplicates (the same photo re-encoded,
    resized, brightened or slightly cropped) go whole into one split; under
    different labels they are likely label errors, left out by default.
    On data known to be clean, --near-distance off skips that search and
    its decoding pass (the first pass then reads only bytes and headers).
    Running it again finishes an interrupted ingest.

    INPUT and --out may be URLs (s3://bucket/images/, gs://..., memory://):
    INPUT is listed here and each worker reads its files itself. With a
    Dask cluster (--scheduler tcp://host:8786) whose workers share no disk
    with this machine, both must be URLs: each worker builds its shards in
    its own temporary folder, checks and uploads them; manifest.json goes
    up last. Credentials come from each machine's environment or config.

    --labels FILE gives the labels instead (UTF-8 CSV, comma-separated, or
    tab/semicolon when the first row has no comma). A first row naming its
    columns is a header: a path column (path, filename, file, image, ...), a
    label column (label, class, category) and optionally split
    (train/validation/val/valid/test); without a header, column 1 is the
    path and column 2 the label. Without a split column, a first folder
    named like a split gives it; the rest is split by --val/--test. An empty
    label makes the image unlabelled. Images FILE does not name are excluded
    ("not in labels file"); rows naming a missing file, a path outside INPUT
    or one image twice with different labels are skipped with their reason.

    \b
    Examples:
      python cli.py ingest ~/kaggle/train --out data/shards --size 94x125
      python cli.py ingest flowers.zip --labels flowers.csv --out data/flowers
      python cli.py ingest s3://bucket/images/ --out s3://bucket/shards --scheduler tcp://10.0.0.5:8786
    """
    from ingest import IngestSettings, ingest as run_ingest
    from ingest.summary import format_summary, format_warnings
    from ingest.upload import format_upload
    from shards.errors import UserError

    settings = IngestSettings(size=size, fit=fit, seed=seed, val=val, test=test, shard_size=shard_size,
                              compression=compression, max_pixels=max_pixels, label_conflicts=label_conflicts,
                              classes=classes, resplit=resplit, near_distance=near_distance)
    try:
        result = run_ingest(input_path, out, settings, scheduler=scheduler, workers=workers, exclude=exclude,
                            strict=strict, force=force, progress=not ctx.obj["quiet"], staging=staging,
                            labels=labels_file, shared_disk=shared_disk)
    except UserError as exc:
        if getattr(exc, "hdf5_unusable", False):
            _exit_now(exc)
        raise
    if "upload" in result:
        say(ctx, "\n".join(([] if result["unchanged"] else [format_summary(result, out)])
                           + [format_upload(result, out)]))
    else:
        say(ctx, format_summary(result, out))
    for line in format_warnings(result):  # shown even with --quiet: the data set may not be what was meant
        click.echo(line, err=True)


def _exit_now(exc):
    """Report `exc` and end the process at once, skipping HDF5's clean-up.

    The disk refused a shard write inside this process, and HDF5 cannot
    recover from that: its clean-up at exit would crash (SIGSEGV) after this
    message. Nothing is left to save (the temp files are gone).
    """
    click.echo(f"Error: {exc}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)
