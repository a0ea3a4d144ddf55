"""`info`: what has been ingested and trained, from the files alone; `--report` writes a data report."""
import json

import click

from kibble.data_report import DEFAULT_OUT
from kibble.group import say
from kibble.options import data_option, runs_option


@click.command()
@data_option()
@runs_option()
@click.option("--json", "as_json", is_flag=True, help="Print the same facts as one JSON document.")
# A plain string: write_data_report checks OUT itself (a URL, a file, the shard folder) in one `Error:` line.
@click.option("--report", "report_out", metavar="[OUT]", is_flag=False,
              flag_value=DEFAULT_OUT, default=None,
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
    from kibble.data_report import ReportSettings, write_data_report
    from kibble.info import info as gather, info_text

    facts = gather(data, runs_root, need_data="--report" if report_out is not None else None)
    if report_out is not None:
        facts["report"] = write_data_report(data, report_out, ReportSettings(groups=report_groups),
                                            progress=not ctx.find_root().obj.get("quiet"))
    click.echo(json.dumps(facts, indent=2) if as_json else info_text(facts, data))
    if report_out is not None:
        say(ctx, _report_summary(facts["report"]))


def _report_summary(report):
    return (f"data report: {report['report']} ({len(report['figures'])} figures; {report['thumbnails']} thumbnails "
            f"of {report['groups_drawn']} near-duplicate groups, {report['placeholders']} shown by name only)")
