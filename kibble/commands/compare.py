"""`compare`: several runs side by side, as one Markdown table."""
import click

from kibble.group import TensorFlowCommand, say
from kibble.options import RunFolder, runs_option


@click.command(cls=TensorFlowCommand)
@click.argument("run_dirs", metavar="[RUN_DIR]...", nargs=-1, type=RunFolder())
@runs_option("Folder holding the run directories; every run in it is compared when none is named.", url=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the table to this .md file.")
@click.option("--curve", type=click.Path(dir_okay=False), default=None,
              help="Also draw validation accuracy against wall-clock minutes of training, one line per run, "
                   "into this .png file (time to accuracy).")
@click.pass_context
def compare(ctx, run_dirs, runs_root, out, curve):
    """Compare runs side by side: size, speed and validation/test metrics.

    Prints a Markdown table on stdout. Runs without an up-to-date
    metrics.json are evaluated first (val and test, best.keras). Runs at a
    URL are downloaded into local copies and only read (nothing uploaded).

    \b
    Example:
      python cli.py compare runs/conv2-20250101-120000 runs/kibble-20250102-090000 --out docs/compare.md
      python cli.py compare --runs s3://my-bucket/runs
      python cli.py compare runs/kibble-a runs/kibble-b --curve docs/time-to-accuracy.png
    """
    from evaluate import compare_runs, markdown_table
    from shards.errors import UserError
    from train.remote_run import resolve_runs

    runs = [path for path, _ in resolve_runs(run_dirs, runs_root, everything=True)]
    if not runs:
        raise UserError(f"no run to compare in {runs_root}/: name run directories, or `train` some first")
    rows = compare_runs(runs, out=out, progress=not ctx.obj["quiet"], curve=curve)
    click.echo(markdown_table(rows))
    if out:
        say(ctx, f"table written to {out}")
    if curve:
        say(ctx, f"time-to-accuracy curve written to {curve}")
