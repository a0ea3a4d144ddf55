"""`predict`: image files -> p_cat and a label for each, on stdout."""
import traceback

import click

from kibble.group import TensorFlowCommand, say, user_facing
from kibble.options import batch_size_option, runs_option

# predict's exit codes beside 0 (all predicted), 2 (the group's user mistakes) and 130 (Ctrl-C).
PREDICT_PARTLY_FAILED = 1
PREDICT_STOPPED = 3


@click.command(cls=TensorFlowCommand)
@click.argument("paths", metavar="IMAGE_OR_FOLDER...", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory whose best.keras predicts. Default: the newest run in --runs.")
@runs_option()
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output on stdout: an aligned table, CSV with a header, or a JSON array.")
@batch_size_option(64, "Images decoded and scored together.")
@click.pass_context
def predict(ctx, paths, run_dir, runs_root, fmt, batch_size):
    """Predict cat or dog for image files, and for every image in folders.

    Each file is decoded and resized exactly as ingest did for the run's
    training images. p_cat is the model's probability of cat; the label is
    cat when p_cat is above the run's validation threshold (from its
    metrics.json, once `evaluate` has run; 0.5 otherwise). Folders are
    searched recursively for .jpg, .jpeg and .png files, following symlinks
    but never round a loop. Only regular files are read.

    Results go to stdout, progress and a summary to stderr. Whatever ends
    the run, the CSV or JSON on stdout stays complete and valid: whole rows,
    a closed array.

    \b
    Exit codes:
      0    every file was predicted
      1    some files or folders could not be used: each is listed with its
           reason, the others are predicted
      2    a problem to fix (no run, a damaged model, a full disk): one
           `Error:` line on stderr
      3    predict stopped part-way on an unexpected error: one `Error:`
           line (-v adds the traceback); the results before it are listed
      130  interrupted (Ctrl-C)

    \b
    Example:
      python cli.py predict photos/ --format csv > predictions.csv
      python cli.py predict cat.jpg dog.png --run runs/kibble-20250101-120000
    """
    from kibble.predict import predict as run_predict, prediction_writer, run_threshold
    from train.rundir import Runs

    run_dir = run_dir or Runs(runs_root).latest().path
    threshold, origin = run_threshold(run_dir)
    say(ctx, f"predicting with {run_dir}; threshold {threshold:.2f} {origin}")
    results = run_predict(paths, run_dir, batch_size=batch_size, threshold=threshold)
    write = prediction_writer(fmt, click.echo)
    counts = {"cat": 0, "dog": 0, "failed": 0}
    try:
        for result in results:
            counts[result["label"] or "failed"] += 1
            write(result)
    except BaseException as exc:
        _end_output(write)  # the results so far stay one valid document, whatever stopped the run
        if isinstance(exc, Exception) and not user_facing(exc):
            _stopped(ctx, exc, sum(counts.values()))
        raise
    write(None)
    say(ctx, f"{counts['cat'] + counts['dog']} predicted ({counts['cat']} cat, {counts['dog']} dog), "
             f"{counts['failed']} failed")
    if counts["failed"]:
        ctx.exit(PREDICT_PARTLY_FAILED)


def _end_output(write):
    try:
        write(None)
    except OSError:  # stdout itself failed (a closed pipe, a full disk): the first error is the one to report
        pass


def _stopped(ctx, exc, listed):
    if ctx.find_root().obj.get("verbose"):
        traceback.print_exception(exc)
    if isinstance(exc, MemoryError):
        detail = "out of memory (a smaller --batch-size needs less)"
    else:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        detail = type(exc).__name__ + (f": {first}" if first else "")
    click.echo(f"Error: predict stopped after {listed} results by an unexpected error: {detail}; "
               "the results before it are listed (-v shows the traceback)", err=True)
    ctx.exit(PREDICT_STOPPED)
