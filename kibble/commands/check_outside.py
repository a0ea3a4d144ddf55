"""`check-outside`: the release check, a run scored on labelled photos from another source."""
import click

from kibble.group import TensorFlowCommand, say
from kibble.options import LocalFolder, RunFolder, batch_size_option, finite, runs_option

# Exit code when the accuracy is below --min-accuracy (2 stays for the user's mistakes).
BELOW_FLOOR = 1


@click.command("check-outside", cls=TensorFlowCommand)
@click.argument("photos", metavar="PHOTOS", type=click.Path(file_okay=False))
@click.option("--run", "run_dir", type=RunFolder(), default=None,
              help="Run directory to check. Default: the newest run in --runs.")
@runs_option(url=True)
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=None, callback=finite,
              help="Fail (exit 1) when the accuracy on the photos is below this floor, e.g. 0.90.")
@click.option("--tta", is_flag=True,
              help="Score each photo as the mean over it and its mirror, at the threshold `evaluate --tta` chose.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="CSV naming each photo (path relative to PHOTOS) and its class, as `ingest --labels`.")
@click.option("--out", type=LocalFolder(), default=None,
              help="Folder for outside.json, outside.md and figures/outside_reliability.png. Default: the run "
                   "directory (evaluate's metrics.json and report are never touched).")
@batch_size_option(64, "Photos decoded and scored together.")
@click.pass_context
def check_outside(ctx, photos, run_dir, runs_root, min_accuracy, tta, labels, out, batch_size):
    """Score a run on labelled photos from another source: the release check.

    PHOTOS holds one sub-folder per class, named as the run's classes
    (PHOTOS/dog, PHOTOS/cat; any layout `ingest` reads works). Each photo
    is decoded exactly as `predict` decodes it and labelled at the threshold
    `evaluate` chose on validation for this best.keras (with --tta, the one
    `evaluate --tta` chose): nothing is chosen on these photos, so run
    `evaluate` first. Reports accuracy, recall per class, the expected
    calibration error and a reliability diagram, and lists every file
    skipped with its reason.

    \b
    Exit codes:
      0    scored (and at or above --min-accuracy when given)
      1    the accuracy is below --min-accuracy: one `Failed:` line
      2    a problem to fix (no run, no recorded threshold, a class the run
           does not know): one `Error:` line

    \b
    Example:
      python cli.py check-outside ~/outside-photos --min-accuracy 0.90
      python cli.py check-outside ~/outside-photos --run runs/conv2-20250101-120000 --tta
    """
    from evaluate.outside import format_outside_summary
    from kibble.outside import check_outside as run_check
    from shards.errors import UserError
    from train.remote_run import resolve_runs

    [(run_dir, remote)] = resolve_runs([run_dir] if run_dir else [], runs_root)
    if remote is not None and out is None:
        raise UserError("the run is at a URL: give --out, a local folder for the check's outputs")
    say(ctx, f"checking {run_dir} on {photos}{' with --tta' if tta else ''}")
    result = run_check(photos, run_dir, out=out, tta=tta, min_accuracy=min_accuracy, batch_size=batch_size,
                       labels=labels, progress=not ctx.obj["quiet"])
    say(ctx, format_outside_summary(result, result["out"]))
    floor = result["floor"]
    if floor["passed"] is False:
        click.echo(f"Failed: accuracy {result['accuracy']:.4f} on {result['count']} outside photos is below "
                   f"--min-accuracy {floor['min_accuracy']:.4f}", err=True)
        ctx.exit(BELOW_FLOOR)
    if floor["passed"]:
        say(ctx, f"passed: accuracy {result['accuracy']:.4f} >= {floor['min_accuracy']:.4f}")
