"""Command line of kibble: `python cli.py COMMAND` or, once installed, `kibble COMMAND`.

A thin click layer: each command checks its options, calls one library
function and prints a summary. Heavy imports (Dask, h5py, TensorFlow) happen
inside the commands so that `--help` is instant.
"""
import os
import sys

import click

__version__ = "0.1.0"
DEFAULT_SHARDS = os.path.join("data", "shards")
DEFAULT_RUNS = "runs"


class UserFacingGroup(click.Group):
    """Turns the library's UserError into a one-line message and exit code 2."""

    def invoke(self, ctx):
        from shards.errors import UserError

        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


def _say(ctx, message):
    if not ctx.obj.get("quiet"):
        click.echo(message, err=True)


def _size(ctx, param, value):
    from ingest.image import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(cls=UserFacingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kibble")
@click.option("-v", "--verbose", is_flag=True, help="Show library logs, TensorFlow's included.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries.")
@click.pass_context
def cli(ctx, verbose, quiet):
    """kibble: stream image folders into HDF5 shards and train Keras models on
    them in bounded memory.

    \b
    Example, on Kaggle's Dogs vs. Cats:
      python cli.py ingest ~/kaggle/dogs-vs-cats      # -> data/shards
      python cli.py train --full                     # -> runs/<model>-<time>
      python cli.py evaluate                         # newest run
    """
    ctx.ensure_object(dict)
    ctx.obj.update(verbose=verbose, quiet=quiet)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("--out", default=DEFAULT_SHARDS, show_default=True, type=click.Path(file_okay=False),
              help="Folder for the shards and manifest.json.")
@click.option("--size", default="94x125", show_default=True, callback=_size,
              help="Image size HEIGHTxWIDTH stored in the shards.")
@click.option("--fit", type=click.Choice(["stretch", "crop", "pad"]), default="stretch", show_default=True,
              help="stretch: plain resize; crop: centre crop to the aspect; pad: letterbox.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split and shard shuffle.")
@click.option("--val", default=0.1, show_default=True, type=click.FloatRange(min=0),
              help="Validation share: a fraction of each class, or a count (>= 1).")
@click.option("--test", default=0.1, show_default=True, type=click.FloatRange(min=0),
              help="Test share: a fraction of each class, or a count (>= 1).")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Images per shard file.")
@click.option("--compression", type=click.Choice(["none", "lzf", "gzip"]), default="none", show_default=True,
              help="HDF5 compression of the images (see docs/shard-format.md).")
@click.option("--scheduler", default="processes", show_default=True,
              help="processes | threads | sync, or a dask.distributed address (tcp://host:8786).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local worker count (default: every core).")
@click.option("--exclude", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File listing names to leave out, one per line.")
@click.option("--max-pixels", default=89_478_485, show_default=True, type=click.IntRange(min=1),
              help="Skip images with more pixels than this (decompression bombs).")
@click.option("--strict", is_flag=True, help="Fail instead of skipping files that cannot be used.")
@click.option("--force", is_flag=True, help="Rebuild even if --out already holds a complete ingest.")
@click.pass_context
def ingest(ctx, input_path, out, size, fit, seed, val, test, shard_size, compression, scheduler,
           workers, exclude, max_pixels, strict, force):
    """Decode, resize and shuffle every image of INPUT into HDF5 shards.

    INPUT is Kaggle's train/ folder (or its parent holding train/ and test1/),
    Kaggle's train.zip, or a folder with Cat/ and Dog/ sub-folders.
    Labels: cat = 1, dog = 0. Running it again finishes an interrupted ingest.

    \b
    Example:
      python cli.py ingest ~/kaggle/train --out data/shards --size 94x125
    """
    from ingest import IngestSettings, ingest as run_ingest

    settings = IngestSettings(size=size, fit=fit, seed=seed, val=val, test=test, shard_size=shard_size,
                              compression=compression, max_pixels=max_pixels)
    result = run_ingest(input_path, out, settings, scheduler=scheduler, workers=workers, exclude=exclude,
                        strict=strict, force=force, progress=not ctx.obj["quiet"])
    if result["unchanged"]:
        _say(ctx, f"{out} already holds this ingest ({result['totals']['images']} images); "
                  "nothing to do (--force rebuilds it).")
        return
    _say(ctx, _ingest_summary(result, out))


def _ingest_summary(result, out):
    lines = [f"{'split':<10} {'images':>7} {'cats':>7} {'dogs':>7} {'shards':>7}"]
    for split, info in result["splits"].items():
        lines.append(f"{split:<10} {info['count']:>7} {info['cats']:>7} {info['dogs']:>7} {len(info['shards']):>7}")
    totals = result["totals"]
    rate = totals["images"] / result["seconds"] if result["seconds"] else 0
    lines.append(
        f"{totals['images']} images in {totals['shards']} shards ({totals['bytes'] / 1e6:,.1f} MB) in {out}; "
        f"{totals['duplicates']} duplicates, {totals['skipped']} skipped, {totals['excluded']} excluded; "
        f"{result['seconds']:.1f} s ({rate:,.0f} img/s)"
        + (f"; {result['reused_shards']} shards kept from an earlier run" if result["reused_shards"] else ""))
    if totals["skipped"]:
        lines.append(f"skipped files and reasons: {os.path.join(out, 'manifest.json')} ('skipped')")
    return "\n".join(lines)


if __name__ == "__main__":
    cli(prog_name="python cli.py")
