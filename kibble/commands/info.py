"""`info`: what has been ingested and trained, from the files alone; `--report` writes a data report."""
import json

import click

from kibble.group import say
from kibble.options import LocalFolder, data_option, runs_option


@click.command()
@data_option()
@runs_option()
@click.option("--json", "as_json", is_flag=True, help="Print the same facts as one JSON document.")
@click.option("--report", "report_out", metavar="[OUT]", type=LocalFolder(), is_flag=False,
              flag_value="data-report", default=None,
              help="Also write a data report (report.md and figures/) into the local folder OUT, "
                   "default ./data-report; OUT may not be inside the shard folder.")
@click.option("--report-groups", type=click.IntRange(0, 500), default=12, show_default=True,
              help="Near-duplicate groups drawn as thumbnails in the report (the others are listed by name).")
@click.pass_context
def info(ctx, data, runs_root, as_json, report_out, report_groups):
    """Show what has been ingested and trained: splits, sizes, runs and their scores.

    Reads manifest.json and each run's files; nothing is recomputed. --data
    may be a URL (s3://bucket/shards): only its manifest.json is read.

    --report writes a data report before training: images per class and
    split, class imbalance, sizes and aspect ratios before resizing,
    duplicates, near-duplicate groups with thumbnails side by side, label
    conflicts, skipped and excluded files. It reads each shard's recorded
    sizes and the few thumbnails' pixels; a URL is streamed, not cached.

    \b
    Example:
      python cli.py info
      python cli.py info --data demo/shards --runs demo/runs
      python cli.py info --data s3://my-bucket/shards
      python cli.py info --data data/shards --report reports/data
    """
    from kibble.info import info as gather, info_text

    facts = gather(data, runs_root)
    if report_out is not None:
        facts["report"] = _report(ctx, facts, data, report_out, report_groups)
    click.echo(json.dumps(facts, indent=2) if as_json else info_text(facts, data))
    if report_out is not None:
        say(ctx, _report_summary(facts["report"]))


def _report(ctx, facts, data, out, groups):
    from kibble.data_report import ReportSettings, write_data_report
    from shards.errors import UserError

    if facts["data"] is None:
        raise UserError(f"--report needs shards, but there are none in {data} ({facts['data_problem']}); "
                        "run `ingest` first or pass --data")
    return write_data_report(data, out, ReportSettings(groups=groups), progress=not ctx.find_root().obj.get("quiet"))


def _report_summary(report):
    return (f"data report: {report['report']} ({len(report['figures'])} figures; {report['thumbnails']} thumbnails "
            f"of {report['groups_drawn']} near-duplicate groups, {report['placeholders']} shown by name only)")
