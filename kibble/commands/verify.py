"""`verify`: every shard re-checked against manifest.json."""
import os

import click

from kibble.options import data_option


@click.command()
@data_option()
@click.pass_context
def verify(ctx, data):
    """Re-check every shard against manifest.json: checksum, shape and counts.

    Also lists files in the folder that the manifest does not name. Prints
    one line per shard that fails and per unlisted HDF5 file and exits with
    code 1; other unlisted files are listed as NOTE lines and do not fail.
    Prints one OK line and exits with 0 when all pass.

    \b
    Example:
      python cli.py verify --data data/shards
    """
    from shards.manifest import load_manifest, unlisted_files, verify_shards

    manifest = load_manifest(data)
    problems = verify_shards(manifest)
    unknown, other = unlisted_files(manifest)
    for problem in problems:
        click.echo(f"FAILED {problem.path}: {problem.problem}")
    for name in unknown:
        click.echo(f"UNKNOWN {os.path.join(data, name)}: an HDF5 file the manifest does not list; "
                   "no stage reads it")
    for name in other:
        click.echo(f"NOTE {os.path.join(data, name)}: not listed in the manifest; no stage reads it")
    total = len(manifest.shards())
    if problems or unknown:
        failed = [f"{len(problems)} of {total} shards failed: run `ingest` again with the same "
                  "options to rebuild them"] if problems else []
        failed += [f"{len(unknown)} HDF5 file(s) not in the manifest: move them out of {data}"] if unknown else []
        click.echo("; ".join(failed), err=True)
        ctx.exit(1)
    click.echo(f"OK: {total} shards in {data} match the manifest")
