"""`evaluate`: a run's model on the held-out shards -> metrics.json, report.md, figures/."""
import os

import click

from evaluate.run import CHECKPOINTS
from kibble.group import TensorFlowCommand, say
from kibble.options import (LocalFolder, RunFolder, access_from, access_options, batch_size_option, data_option,
                            runs_option)


@click.command(cls=TensorFlowCommand)
@click.argument("run_dirs", metavar="[RUN_DIR]...", nargs=-1, type=RunFolder())
@runs_option("Folder holding the run directories; its newest run is used when none is named.", url=True)
@data_option(None, "Shard folder to score. Default: the one the run was trained on.")
@access_options
@click.option("--split", type=click.Choice(["val", "test", "both"]), default="both", show_default=True,
              help="Splits to score. The threshold is always chosen on val, so test brings val along.")
@click.option("--out", type=LocalFolder(), default=None,
              help="Folder for metrics.json, report.md and figures/. Default: the run directory "
                   "(OUT/<run name> when several runs are named).")
@click.option("--checkpoint", type=click.Choice(tuple(CHECKPOINTS)), default="best", show_default=True,
              help="Model file: best.keras (lowest val_loss) or last.keras.")
@batch_size_option(256, "Images per prediction call.")
@click.option("--tta", is_flag=True, help="Average each score with the mirror image's (twice the time); "
                                         "`predict --tta` scores the same way.")
@click.option("--no-verify", is_flag=True,
              help="Skip the shards' sha256 check (their split, size and count are still checked).")
@click.pass_context
def evaluate(ctx, run_dirs, runs_root, data, cache, stream, split, out, checkpoint, batch_size, tta, no_verify):
    """Score trained runs on the val and test shards; write metrics and a report.

    Each run gets metrics.json, report.md and figures/ (ROC, accuracy vs
    threshold, score histograms, confusion matrices, reliability diagram,
    training curves, the most confident mistakes). Two classes: the
    decision threshold is chosen on val and applied unchanged to test;
    calibration bins the probability of cat against the share of cats.
    With --tta the threshold is chosen from the averaged scores and kept
    beside the plain one, for `predict --tta`. More than two: the most
    probable class is the prediction (no threshold); top-k, per-class and
    macro metrics, calibration of the top probability and the N x N
    confusion matrix.

    \b
    Example:
      python cli.py evaluate                          # newest run in runs/
      python cli.py evaluate runs/conv2-20250101-120000 --split test
      python cli.py evaluate --tta                    # mirror-averaged scores, their own threshold
      python cli.py evaluate --data s3://my-bucket/shards --cache /scratch/kibble
      python cli.py evaluate s3://my-bucket/runs/conv2-20250101-120000   # outputs uploaded beside it
    """
    from evaluate import evaluate_run
    from evaluate.summary import format_summary
    from train.remote_run import resolve_runs, upload_outputs

    runs = resolve_runs(run_dirs, runs_root, _cache_root(cache))
    splits = ("val", "test") if split == "both" else (split,)
    for run_dir, remote in runs:
        name = os.path.basename(os.path.normpath(run_dir))
        target = os.path.join(out, name) if out and len(runs) > 1 else out
        result = evaluate_run(run_dir, data=data, splits=splits, out=target, batch_size=batch_size,
                              checkpoint=checkpoint, progress=not ctx.obj["quiet"], tta=tta,
                              verify=not no_verify, access=access_from(cache, stream))
        if remote is not None and not target:  # written into the working copy: they belong at the URL
            upload_outputs(remote, run_dir)
            result["out"] = remote.url
        for warning in result["warnings"]:
            click.echo(f"Warning: {warning}", err=True)
        say(ctx, format_summary(result))


def _cache_root(cache):
    """--cache DIR also roots the working copies of runs at a URL; `none` (streaming) leaves the default."""
    return None if cache is None or cache.strip().lower() == "none" else cache
