"""Command line of kibble: `python cli.py COMMAND` or, once installed, `kibble COMMAND`.

A thin click layer: each command checks its options, calls one library
function and prints a summary. Heavy imports (Dask, h5py, TensorFlow) happen
inside the commands so that `--help` is instant.
"""
import os

import click

__version__ = "0.1.0"
DEFAULT_SHARDS = os.path.join("data", "shards")
DEFAULT_RUNS = "runs"


class UserFacingGroup(click.Group):
    """Turns the library's UserError into a one-line message and exit code 2."""

    def invoke(self, ctx):
        from shards.errors import UserError
        from shards.fsio import DISK_ERRORS, disk_error_message

        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except OSError as exc:  # a full disk, a read-only folder: the user's to fix, not a bug
            if exc.errno not in DISK_ERRORS:
                raise
            click.echo(f"Error: {disk_error_message(exc)}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


class TensorFlowCommand(click.Command):
    """A command that needs TensorFlow: imported quietly once its options are
    parsed, so `--help` stays instant."""

    def invoke(self, ctx):
        from train.tf_env import import_tensorflow

        import_tensorflow(verbose=ctx.find_root().obj.get("verbose", False))
        return super().invoke(ctx)


def _say(ctx, message):
    if not ctx.obj.get("quiet"):
        click.echo(message, err=True)


def _size(ctx, param, value):
    from shards.image import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _share(ctx, param, value):
    """--val/--test: a fraction in [0, 1) or a whole count; never NaN, infinite or negative."""
    from ingest.plan import share_problem

    problem = share_problem(value)
    if problem:
        raise click.BadParameter(f"{problem}. Received: {value!r}")
    return value


@click.group(cls=UserFacingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kibble")
@click.option("-v", "--verbose", is_flag=True, help="Show library logs, TensorFlow's included.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries.")
@click.pass_context
def cli(ctx, verbose, quiet):
    """kibble: stream image folders into HDF5 shards and train Keras models on
    them in bounded memory.

    \b
    Example, on Kaggle's Dogs vs. Cats:
      python cli.py ingest ~/kaggle/dogs-vs-cats      # -> data/shards
      python cli.py train --full                     # -> runs/<model>-<time>
      python cli.py evaluate                         # newest run
    """
    ctx.ensure_object(dict)
    ctx.obj.update(verbose=verbose, quiet=quiet)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("--out", default=DEFAULT_SHARDS, show_default=True, type=click.Path(file_okay=False),
              help="Folder for the shards and manifest.json.")
@click.option("--size", default="94x125", show_default=True, callback=_size,
              help="Image size HEIGHTxWIDTH stored in the shards.")
@click.option("--fit", type=click.Choice(["stretch", "crop", "pad"]), default="stretch", show_default=True,
              help="stretch: plain resize; crop: centre crop to the aspect; pad: letterbox.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1),
              help="Seed of the split and shard shuffle.")
@click.option("--val", default=0.1, show_default=True, type=float, callback=_share,
              help="Validation share: a fraction of each class (rounded half up per class), "
                   "or an exact count (>= 1) split across classes in proportion.")
@click.option("--test", default=0.1, show_default=True, type=float, callback=_share,
              help="Test share: a fraction of each class (rounded half up per class), "
                   "or an exact count (>= 1) split across classes in proportion.")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Images per shard file.")
@click.option("--compression", type=click.Choice(["none", "lzf", "gzip"]), default="none", show_default=True,
              help="HDF5 compression of the images (see docs/shard-format.md).")
@click.option("--scheduler", default="processes", show_default=True,
              help="processes | threads | sync, or a dask.distributed address (tcp://host:8786).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local worker count (default: every core).")
@click.option("--exclude", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File listing names to leave out, one per line.")
@click.option("--max-pixels", default=89_478_485, show_default=True, type=click.IntRange(min=1),
              help="Skip images with more pixels than this (decompression bombs).")
@click.option("--label-conflicts", type=click.Choice(["drop", "first"]), default="drop", show_default=True,
              help="Identical files under different labels (cat.1.jpg = dog.9.jpg): drop keeps none, "
                   "first keeps the first by name. Listed in manifest.json either way.")
@click.option("--strict", is_flag=True, help="Fail instead of skipping files that cannot be used.")
@click.option("--force", is_flag=True, help="Rebuild even if --out already holds a complete ingest.")
@click.pass_context
def ingest(ctx, input_path, out, size, fit, seed, val, test, shard_size, compression, scheduler,
           workers, exclude, max_pixels, label_conflicts, strict, force):
    """Decode, resize and shuffle every image of INPUT into HDF5 shards.

    INPUT is Kaggle's train/ folder (or its parent holding train/ and test1/),
    Kaggle's train.zip, or a folder with Cat/ and Dog/ sub-folders.
    Labels: cat = 1, dog = 0. Running it again finishes an interrupted ingest.

    \b
    Example:
      python cli.py ingest ~/kaggle/train --out data/shards --size 94x125
    """
    from ingest import IngestSettings, ingest as run_ingest
    from shards.errors import UserError

    settings = IngestSettings(size=size, fit=fit, seed=seed, val=val, test=test, shard_size=shard_size,
                              compression=compression, max_pixels=max_pixels, label_conflicts=label_conflicts)
    try:
        result = run_ingest(input_path, out, settings, scheduler=scheduler, workers=workers, exclude=exclude,
                            strict=strict, force=force, progress=not ctx.obj["quiet"])
    except UserError as exc:
        if getattr(exc, "hdf5_unusable", False):
            # The disk refused a shard write inside this process, and HDF5 cannot
            # recover from that: its clean-up at exit would crash (SIGSEGV) after
            # this message. Nothing is left to save (the temp files are gone), so
            # end here without it.
            import sys

            click.echo(f"Error: {exc}", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        raise
    if result["unchanged"]:
        _say(ctx, f"{out} already holds this ingest ({result['totals']['images']} images); "
                  "nothing to do (--force rebuilds it).")
        return
    _say(ctx, _ingest_summary(result, out))


def _ingest_summary(result, out):
    lines = [f"{'split':<10} {'images':>7} {'cats':>7} {'dogs':>7} {'shards':>7}"]
    for split, info in result["splits"].items():
        lines.append(f"{split:<10} {info['count']:>7} {info['cats']:>7} {info['dogs']:>7} {len(info['shards']):>7}")
    totals = result["totals"]
    rate = totals["images"] / result["seconds"] if result["seconds"] else 0
    lines.append(
        f"{totals['images']} images in {totals['shards']} shards ({totals['bytes'] / 1e6:,.1f} MB) in {out}; "
        f"{totals['duplicates']} duplicates, {totals.get('label_conflicts', 0)} label conflicts, "
        f"{totals['skipped']} skipped, {totals['excluded']} excluded; "
        f"{result['seconds']:.1f} s ({rate:,.0f} img/s)"
        + (f"; {result['reused_shards']} shards kept from an earlier run" if result["reused_shards"] else ""))
    if totals["skipped"]:
        lines.append(f"skipped files and reasons: {os.path.join(out, 'manifest.json')} ('skipped')")
    if totals.get("label_conflicts"):
        lines.append(f"identical files under different labels: {os.path.join(out, 'manifest.json')} "
                     "('label_conflicts'; --label-conflicts first keeps the first copy)")
    return "\n".join(lines)


@cli.command(cls=TensorFlowCommand)
@click.option("--data", default=DEFAULT_SHARDS, show_default=True, type=click.Path(file_okay=False),
              help="Shard folder written by ingest.")
@click.option("--full", is_flag=True, help="Train on 10,000 / validate on 2,500 images (the full experiment).")
@click.option("--train-size", type=click.IntRange(min=1), default=None,
              help="Train images (first N of the shuffled split). Default 4,096, the tutorial's sample.")
@click.option("--val-size", type=click.IntRange(min=1), default=None,
              help="Validation images. Default 1,024.")
@click.option("--model", "model_name", type=click.Choice(["mlp", "conv1", "conv2", "conv2-wide", "kibble"]),
              default="kibble", show_default=True, help="Architecture; the first four are the tutorial's.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default: the model's recipe.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True, max=1), default=None,
              help="Learning rate. Default: the model's recipe.")
@click.option("--loss", type=click.Choice(["mse", "bce"]), default=None,
              help="mse (the tutorial's) or bce. Default: the model's recipe.")
@click.option("--seed", default=0, show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Run directory. Default: RUNS/<model>-<timestamp>.")
@click.option("--runs", "runs_root", default=DEFAULT_RUNS, show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the run directories.")
@click.option("--resume", is_flag=True, help="Continue the newest run (or --run-dir) with its own settings.")
@click.option("--no-verify", is_flag=True, help="Skip checking the shards' checksums before training.")
@click.pass_context
def train(ctx, data, full, train_size, val_size, model_name, epochs, batch_size, lr, loss, seed, run_dir,
          runs_root, resume, no_verify):
    """Train a model on the shards, streaming them through tf.data.

    The test split is never read. Running the same command again (or
    `train --resume`) continues an interrupted run from its last epoch.

    \b
    Example:
      python cli.py train --full --model conv2
      python cli.py train --resume
    """
    from train.run import FULL, LAPTOP_SAMPLE, TrainSettings, train as run_train

    if full and (train_size or val_size):
        raise click.BadParameter("--full sets both sizes; drop --train-size/--val-size", param_hint="--full")
    sizes = FULL if full else LAPTOP_SAMPLE
    settings = TrainSettings(data=data, model=model_name, train_size=train_size or sizes[0],
                             val_size=val_size or sizes[1], epochs=epochs, lr=lr, loss=loss,
                             batch_size=batch_size, seed=seed)
    result = run_train(settings, run_dir=run_dir, runs_root=runs_root, resume=resume, verify=not no_verify,
                       progress=not ctx.obj["quiet"])
    _say(ctx, _train_summary(result))


def _train_summary(result):
    if result["already_done"]:
        return f"{result['run_dir']} already finished its {result['epochs']} epochs; nothing to do."
    size = f"{result['model_bytes'] / 1e6:,.1f} MB" if result["model_bytes"] else "n/a"
    acc = result["best_val_accuracy"]
    return (f"{result['model']}: {result['epochs']} epochs, {result['seconds_per_epoch']:.1f} s/epoch; "
            f"best epoch {result['best_epoch']}: val_loss {result['best_val_loss']:.4f}, "
            f"val_accuracy {acc:.4f}; best model {size}\nrun directory: {result['run_dir']}")


@cli.command(cls=TensorFlowCommand)
@click.argument("run_dirs", metavar="[RUN_DIR]...", nargs=-1, type=click.Path(file_okay=False))
@click.option("--runs", "runs_root", default=DEFAULT_RUNS, show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the run directories; its newest run is used when none is named.")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Shard folder to score. Default: the one the run was trained on.")
@click.option("--split", type=click.Choice(["val", "test", "both"]), default="both", show_default=True,
              help="Splits to score. The threshold is always chosen on val, so test brings val along.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for metrics.json, report.md and figures/. Default: the run directory "
                   "(OUT/<run name> when several runs are named).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Model file: best.keras (lowest val_loss) or last.keras.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images per prediction call.")
@click.option("--tta", is_flag=True, help="Average each score with the mirror image's (twice the time).")
@click.option("--no-verify", is_flag=True,
              help="Skip the shards' sha256 check (their split, size and count are still checked).")
@click.pass_context
def evaluate(ctx, run_dirs, runs_root, data, split, out, checkpoint, batch_size, tta, no_verify):
    """Score trained runs on the val and test shards; write metrics and a report.

    Each run gets metrics.json, report.md and figures/ (ROC, accuracy vs
    threshold, score histograms, confusion matrices, training curves, the
    most confident mistakes). The decision threshold is chosen on val and
    applied unchanged to test.

    \b
    Example:
      python cli.py evaluate                          # newest run in runs/
      python cli.py evaluate runs/conv2-20250101-120000 --split test
    """
    from evaluate import evaluate_run
    from train.rundir import latest_run

    runs = list(run_dirs) or [latest_run(runs_root)]
    splits = ("val", "test") if split == "both" else (split,)
    for run_dir in runs:
        target = os.path.join(out, os.path.basename(os.path.normpath(run_dir))) if out and len(runs) > 1 else out
        result = evaluate_run(run_dir, data=data, splits=splits, out=target, batch_size=batch_size,
                              checkpoint=checkpoint, progress=not ctx.obj["quiet"], tta=tta,
                              verify=not no_verify)
        for warning in result["warnings"]:
            click.echo(f"Warning: {warning}", err=True)
        _say(ctx, _evaluate_summary(result))


def _evaluate_summary(result):
    def cell(value, width, digits):
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    threshold = result["threshold"]
    lines = [f"{result['model']} ({result['checkpoint']}) of {result['run']}",
             f"{'split':<6} {'images':>7} {'MSE':>7} {'Pearson':>8} {'AUC':>6} {'best10':>7} "
             f"{'acc@' + format(threshold['value'], '.2f'):>8} {'F1':>6}"]
    for split, m in result["splits"].items():
        lines.append(f"{split:<6} {m['count']:>7} {cell(m['mse'], 7, 4)} {cell(m['pearson_r'], 8, 3)} "
                     f"{cell(m['roc_auc'], 6, 3)} {cell(m['best_accuracy'], 7, 3)} "
                     f"{cell(m['accuracy'], 8, 3)} {cell(m['f1'], 6, 3)}")
    lines.append(f"threshold {threshold['value']:.2f} chosen on {threshold['chosen_on']}; "
                 f"report: {os.path.join(result['out'], 'report.md')}")
    return "\n".join(lines)


@cli.command(cls=TensorFlowCommand)
@click.argument("run_dirs", metavar="[RUN_DIR]...", nargs=-1, type=click.Path(file_okay=False))
@click.option("--runs", "runs_root", default=DEFAULT_RUNS, show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the run directories; every run in it is compared when none is named.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the table to this .md file.")
@click.pass_context
def compare(ctx, run_dirs, runs_root, out):
    """Compare runs side by side: size, speed and validation/test metrics.

    Prints a Markdown table on stdout. Runs without an up-to-date
    metrics.json are evaluated first (val and test, best.keras).

    \b
    Example:
      python cli.py compare runs/conv2-20250101-120000 runs/kibble-20250102-090000 --out docs/compare.md
    """
    from evaluate import compare_runs, markdown_table
    from shards.errors import UserError
    from train.rundir import CONFIG

    runs = list(run_dirs)
    if not runs and os.path.isdir(runs_root):
        runs = sorted(os.path.join(runs_root, d) for d in os.listdir(runs_root)
                      if os.path.exists(os.path.join(runs_root, d, CONFIG)))
    if not runs:
        raise UserError(f"no run to compare in {runs_root}/: name run directories, or `train` some first")
    rows = compare_runs(runs, out=out, progress=not ctx.obj["quiet"])
    click.echo(markdown_table(rows))
    if out:
        _say(ctx, f"table written to {out}")


@cli.command(cls=TensorFlowCommand)
@click.argument("folder", required=False, type=click.Path(exists=True))
@click.option("--workdir", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the generated images, shards and runs; reused when run again.")
@click.pass_context
def demo(ctx, folder, workdir):
    """Run the whole pipeline on a small data set: ingest, train, evaluate.

    Without FOLDER it draws 1,500 made-up cat and dog pictures (Pillow
    and NumPy, no download) into WORKDIR/images; with FOLDER (e.g. Kaggle's
    train/) it uses all of those images instead. On the generated pictures it
    takes under 5 minutes on a 2-core laptop. It ends by printing the test
    accuracy and where report.md is. Running it again reuses the images and
    shards and trains a new run.

    \b
    Example:
      python cli.py demo                      # generated pictures -> demo/
      python cli.py demo ~/kaggle/train --workdir demo-kaggle
    """
    from evaluate.demo import run_demo

    run_demo(workdir, source=folder, progress=not ctx.obj["quiet"], log=lambda line: _say(ctx, line))


@cli.command(cls=TensorFlowCommand)
@click.argument("paths", metavar="IMAGE_OR_FOLDER...", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory whose best.keras predicts. Default: the newest run in --runs.")
@click.option("--runs", "runs_root", default=DEFAULT_RUNS, show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the run directories.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output on stdout: an aligned table, CSV with a header, or a JSON array.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images decoded and scored together.")
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
    from evaluate.predict import predict as run_predict, run_threshold
    from train.rundir import latest_run

    run_dir = run_dir or latest_run(runs_root)
    threshold, origin = run_threshold(run_dir)
    _say(ctx, f"predicting with {run_dir}; threshold {threshold:.2f} {origin}")
    results = run_predict(paths, run_dir, batch_size=batch_size, threshold=threshold)
    write = _prediction_writer(fmt)
    counts = {"cat": 0, "dog": 0, "failed": 0}
    try:
        for result in results:
            counts[result["label"] or "failed"] += 1
            write(result)
    except BaseException as exc:
        _end_output(write)  # the results so far stay one valid document, whatever stopped the run
        if isinstance(exc, Exception) and not _user_facing(exc):
            _predict_stopped(ctx, exc, sum(counts.values()))
        raise
    write(None)
    _say(ctx, f"{counts['cat'] + counts['dog']} predicted ({counts['cat']} cat, {counts['dog']} dog), "
              f"{counts['failed']} failed")
    if counts["failed"]:
        ctx.exit(PREDICT_PARTLY_FAILED)


# predict's exit codes beside 0 (all predicted), 2 (UserFacingGroup's user mistakes) and 130 (Ctrl-C).
PREDICT_PARTLY_FAILED = 1
PREDICT_STOPPED = 3


def _user_facing(exc):
    """True for the errors UserFacingGroup reports as a user's mistake (exit 2)."""
    from shards.errors import UserError
    from shards.fsio import DISK_ERRORS

    return isinstance(exc, UserError) or (isinstance(exc, OSError) and exc.errno in DISK_ERRORS)


def _end_output(write):
    try:
        write(None)
    except OSError:  # stdout itself failed (a closed pipe, a full disk): the first error is the one to report
        pass


def _predict_stopped(ctx, exc, listed):
    import traceback

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


def _prediction_writer(fmt):
    """A function writing one result per call to stdout, and the ending when called with None."""
    import csv
    import io
    import json

    started = [False]

    def table(result):
        if result is None:
            return
        if not started[0]:
            click.echo(f"{'p_cat':>7}  {'label':<5}  file")
            started[0] = True
        p_cat = "-" if result["p_cat"] is None else f"{result['p_cat']:.4f}"
        error = f"  ERROR: {result['error']}" if result["error"] else ""
        click.echo(f"{p_cat:>7}  {result['label'] or '-':<5}  {result['file']}{error}")

    def as_csv(result):
        line = io.StringIO()
        writer = csv.DictWriter(line, fieldnames=("file", "p_cat", "label", "error"), lineterminator="\n")
        if not started[0]:
            writer.writeheader()
            started[0] = True
        if result is not None:
            writer.writerow({**result, "p_cat": "" if result["p_cat"] is None else f"{result['p_cat']:.6f}"})
        click.echo(line.getvalue(), nl=False)

    def as_json(result):  # one array, written as it goes
        if result is None:
            click.echo("\n]" if started[0] else "[]")
            return
        click.echo(("[\n  " if not started[0] else ",\n  ") + json.dumps(result), nl=False)
        started[0] = True

    return {"table": table, "csv": as_csv, "json": as_json}[fmt]


@cli.command()
@click.option("--data", default=DEFAULT_SHARDS, show_default=True, type=click.Path(file_okay=False),
              help="Shard folder written by ingest.")
@click.option("--runs", "runs_root", default=DEFAULT_RUNS, show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the run directories.")
@click.option("--json", "as_json", is_flag=True, help="Print the same facts as one JSON document.")
def info(data, runs_root, as_json):
    """Show what has been ingested and trained: splits, sizes, runs and their scores.

    Reads manifest.json and each run's files; nothing is recomputed.

    \b
    Example:
      python cli.py info
      python cli.py info --data demo/shards --runs demo/runs
    """
    import json

    from evaluate.info import info as gather

    facts = gather(data, runs_root)
    click.echo(json.dumps(facts, indent=2) if as_json else _info_text(facts, data))


def _info_text(facts, data_dir):
    def cell(value, fmt="{}"):
        return "-" if value is None else fmt.format(value)

    data = facts["data"]
    if data is None:
        lines = [f"shards: none in {data_dir} ({facts['data_problem']})"]
    else:
        lines = [f"shards: {data['folder']}: {data['images']} images of {data['image_size'][0]}x"
                 f"{data['image_size'][1]} ({data['fit']}) in {data['shards']} shards, "
                 f"{data['bytes'] / 1e6:,.1f} MB; {data['skipped']} skipped, {data['excluded']} excluded, "
                 f"{data['duplicates']} duplicates",
                 f"  {'split':<10} {'images':>7} {'cats':>7} {'dogs':>7} {'shards':>7}"]
        for split, s in data["splits"].items():
            lines.append(f"  {split:<10} {s['count']:>7} {s['cats']:>7} {s['dogs']:>7} {s['shards']:>7}")
    if not facts["runs"]:
        lines.append(f"runs: none in {facts['runs_root']}/")
    else:
        lines.append(f"runs in {facts['runs_root']}/:")
        lines.append(f"  {'run':<32} {'model':<10} {'epochs':>7} {'best val acc':>12} {'test acc':>9}")
        for run in facts["runs"]:
            epochs = f"{run['epochs_done']}/{cell(run['epochs'])}"
            lines.append(f"  {os.path.basename(run['run']):<32} {cell(run['model']):<10} {epochs:>7} "
                         f"{cell(run['best_val_accuracy'], '{:.3f}'):>12} {cell(run['test_accuracy'], '{:.3f}'):>9}")
    return "\n".join(lines)


@cli.command()
@click.option("--data", default=DEFAULT_SHARDS, show_default=True, type=click.Path(file_okay=False),
              help="Shard folder written by ingest.")
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


if __name__ == "__main__":
    cli(prog_name="python cli.py")
