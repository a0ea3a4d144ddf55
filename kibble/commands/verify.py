"""`verify`: every shard re-checked against manifest.json."""
import os

import click

from kibble.options import access_from, access_options, data_option


@click.command()
@data_option()
@access_options
@click.pass_context
def verify(ctx, data, cache, stream):
    """Re-check every shard against manifest.json: checksum, shape and counts.

    Also lists files in the folder that the manifest does not name. Prints
    one line per shard that fails and per unlisted HDF5 file and exits with
    code 1; other unlisted files are listed as NOTE lines and do not fail.
    Prints one OK line and exits with 0 when all pass. With a URL, the
    shards are checked as they are downloaded into the cache (a damaged
    cached copy is fetched again), or read in storage itself with --stream.

    \b
    Example:
      python cli.py verify --data data/shards
      python cli.py verify --data s3://my-bucket/shards --stream
    """
    from shards import storage
    from shards.manifest import unlisted_files, verify_shards

    access = access_from(cache, stream)
    manifest, problems = storage.open_shards_checked(data, access, progress=not ctx.find_root().obj["quiet"])
    failed = {os.path.basename(p.path) for p in problems}
    problems += [p for p in verify_shards(manifest) if os.path.basename(p.path) not in failed]
    if storage.is_cached(data, access):  # the listing that matters is the bucket's, not the cache's
        manifest = type(manifest)(folder=data, data=manifest.data)
    unknown, other = unlisted_files(manifest)
    data = storage.public(data)
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
