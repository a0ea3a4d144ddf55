"""`info`: what has been ingested and trained, from the files alone."""
import json

import click

from kibble.options import data_option, runs_option


@click.command()
@data_option()
@runs_option()
@click.option("--json", "as_json", is_flag=True, help="Print the same facts as one JSON document.")
def info(data, runs_root, as_json):
    """Show what has been ingested and trained: splits, sizes, runs and their scores.

    Reads manifest.json and each run's files; nothing is recomputed. --data
    may be a URL (s3://bucket/shards): only its manifest.json is read.

    \b
    Example:
      python cli.py info
      python cli.py info --data demo/shards --runs demo/runs
      python cli.py info --data s3://my-bucket/shards
    """
    from kibble.info import info as gather, info_text

    facts = gather(data, runs_root)
    click.echo(json.dumps(facts, indent=2) if as_json else info_text(facts, data))
