"""`predict`: image files -> a label and its probability for each, on stdout."""
import os
import traceback

import click

from kibble.group import TensorFlowCommand, say, user_facing
from kibble.options import RunFolder, batch_size_option, runs_option

# predict's exit codes beside 0 (all predicted), 2 (the group's user mistakes) and 130 (Ctrl-C).
PREDICT_PARTLY_FAILED = 1
PREDICT_STOPPED = 3


@click.command(cls=TensorFlowCommand)
@click.argument("paths", metavar="IMAGE_OR_FOLDER...", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run_dir", type=RunFolder(), default=None,
              help="Run directory whose best.keras predicts. Default: the newest run in --runs. A URL is "
                   "downloaded into a local copy under $KIBBLE_CACHE (else ~/.cache/kibble), read only.")
@runs_option(url=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output on stdout: an aligned table, CSV with a header, or a JSON array.")
@batch_size_option(64, "Images decoded and scored together.")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="With more than two classes: the K most probable classes of each image, with their "
                   "probabilities. (Two classes: p_cat already says both.)")
@click.option("--tta", is_flag=True,
              help="Average each image's probabilities with its mirror image's, as `evaluate --tta` does "
                   "(twice the time); two classes use the threshold `evaluate --tta` chose.")
@click.pass_context
def predict(ctx, paths, run_dir, runs_root, fmt, batch_size, top_k, tta):
    """Predict the class of image files, and of every image in folders.

    Each file is decoded and resized exactly as ingest did for the run's
    training images. Two classes (Dogs vs. Cats): p_cat is the model's
    probability of cat; the label is cat when p_cat is above the run's
    validation threshold (from its metrics.json, once `evaluate` has run;
    0.5 otherwise). With --tta each image is scored as the mean over it and
    its mirror, exactly as `evaluate --tta` scores, and labelled at the
    threshold `evaluate --tta` chose on validation (each way of scoring
    has its own). More classes: the label is the most probable class,
    with its probability and the --top-k best; JSON gives every class's
    probability, CSV one p_<class> column per class. Folders are
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
      python cli.py predict photos/ --tta      # after `evaluate --tta` on the run
      python cli.py predict photos/ --run s3://my-bucket/runs/kibble-20250101-120000
    """
    from kibble.predict import DOGS_VS_CATS, predict as run_predict, prediction_writer, run_classes, run_threshold
    from train.remote_run import resolve_runs

    [(run_dir, _)] = resolve_runs([run_dir] if run_dir else [], runs_root)
    classes = run_classes(run_dir) if os.path.isdir(run_dir) else None  # predict names a missing run
    threshold = None
    if classes is not None and len(classes) > 2:
        say(ctx, f"predicting with {run_dir}{'; --tta' if tta else ''}; {len(classes)} classes")
    else:
        threshold, origin = run_threshold(run_dir, tta)
        say(ctx, f"predicting with {run_dir}{'; --tta' if tta else ''}; threshold {threshold:.2f} {origin}")
    results = run_predict(paths, run_dir, batch_size=batch_size, threshold=threshold, top_k=top_k, tta=tta)
    write = prediction_writer(fmt, click.echo, classes, top_k)
    # Two classes list the positive class (index 1, cat) first, as they always did.
    shown = list(classes or DOGS_VS_CATS)
    shown = shown[::-1] if len(shown) == 2 else shown
    counts, failed = dict.fromkeys(shown, 0), 0  # a class may be called "failed"
    try:
        for result in results:
            if result["label"] is None:
                failed += 1
            else:
                counts[result["label"]] += 1
            write(result)
    except BaseException as exc:
        _end_output(write)  # the results so far stay one valid document, whatever stopped the run
        if isinstance(exc, Exception) and not user_facing(exc):
            _stopped(ctx, exc, sum(counts.values()) + failed)
        raise
    write(None)
    per_class = ", ".join(f"{counts[name]} {name}" for name in shown)
    say(ctx, f"{sum(counts.values())} predicted ({per_class}), {failed} failed")
    if failed:
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
