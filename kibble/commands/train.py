"""`train`: shards -> a run directory (config, checkpoints, history)."""
import os
from dataclasses import fields

import click
from click.core import ParameterSource

from kibble.group import TrainingCommand, say
from kibble.options import (NumberOrWord, access_from, access_options, batch_size_option, checkpoint_interval,
                            data_option, finite, run_dir_option, runs_option, seed_option, training_minutes)
from train.models import AUGMENTS, DEFAULT_AUGMENT, DEFAULT_MODEL, MAX_UPSCALE, MODELS
from train.precision import PRECISIONS
from train.run import (ALL_IMAGES, CLASS_WEIGHTS, DEFAULT_CHECKPOINT_EVERY, FULL, LAPTOP_SAMPLE, MAX_SEED, SMALL_SCALE,
                       TrainSettings)

# train's options -> the TrainSettings fields they set (for "which did the user give?"): each setting's own
# option, and the two whose names differ.
_TRAIN_FIELDS = {**{f.name: (f.name,) for f in fields(TrainSettings) if f.name != "model"},
                 "model_name": ("model",), "full": ("train_size", "val_size")}


@click.command(cls=TrainingCommand)
@data_option()
@access_options
@click.option("--full", is_flag=True,
              help=f"Train on {FULL[0]:,} / validate on {FULL[1]:,} images (the full experiment), "
                   "or all a smaller split holds.")
@click.option("--train-size", type=NumberOrWord("all", ALL_IMAGES, 1, unit="images"), default=None,
              help=f"Train images (first N of the shuffled split), or all. Default {LAPTOP_SAMPLE[0]:,}, "
                   "the tutorial's sample, or all a smaller split holds.")
@click.option("--val-size", type=NumberOrWord("all", ALL_IMAGES, 1, unit="images"), default=None,
              help=f"Validation images, or all. Default {LAPTOP_SAMPLE[1]:,}, or all a smaller split holds.")
@click.option("--model", "model_name", type=click.Choice(MODELS), default=DEFAULT_MODEL, show_default=True,
              help="Architecture; the first four are the tutorial's.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Default: the model's recipe. With --resume: the run's new total (extends a finished run).")
@click.option("--minutes", default=None, callback=training_minutes,
              help="Time budget: stop when this much training (with validation) is done, 20 or 90s, 20m, 1.5h; "
                   "the default model's learning rate anneals over it. --epochs is then an upper bound (default: "
                   "none). With --resume: the run's new budget.")
@batch_size_option(None, "Images per training step. Default: the model's recipe (16 for kibble, 32 for the "
                   "tutorial's); give --lr with another size (the recipe's rate is for its own batch).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True, max=1, max_open=True), default=None,
              callback=finite, help="Learning rate. Default: the model's recipe.")
@click.option("--weight-decay", type=click.FloatRange(min=0, max=1, max_open=True), default=None, callback=finite,
              help="The default model's AdamW weight decay (decoupled; each step shrinks the weights by it times "
                   "the learning rate). Default: the recipe's. Kept by --resume; the tutorial's models take only 0.")
@click.option("--loss", type=click.Choice(["mse", "bce"]), default=None,
              help="mse (the tutorial's; two classes only) or bce (cross-entropy; sparse categorical with more "
                   "than two classes). Default: the model's recipe; cross-entropy for more than two classes.")
@click.option("--class-weight", type=click.Choice(CLASS_WEIGHTS), default="none", show_default=True,
              help="balanced: weigh each class by n / (classes x its images in the train split), for uneven sets.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="bfloat16: mixed bfloat16 (output layer float32), only on a CPU with AVX-512 BF16 or AMX; "
                   "auto: bfloat16 where the CPU has it, else float32. Default: the model's recipe (auto for "
                   "kibble, float32 for the tutorial's). Kept by --resume.")
@click.option("--augment", type=click.Choice(AUGMENTS), default=DEFAULT_AUGMENT, show_default=True,
              help="The default model's training augmentation: standard (flips, shifts, zooms, small rotations) "
                   "or photo (also crops of other aspects, brightness, contrast, saturation and hue). "
                   "Kept by --resume; the tutorial's models have none.")
@click.option("--small-first", type=click.FloatRange(min=0, max=1, max_open=True), default=None, callback=finite,
              help="Train the default model's first SHARE of the run (of --minutes, else of the epochs) on images "
                   f"scaled to {SMALL_SCALE:g} per side (about half the pixels, about half the time per epoch), "
                   "then at the shards' size. 0: always that size. Default: the recipe's (0.5 for kibble; the "
                   "tutorial's models take only 0). Kept by --resume.", metavar="SHARE")
@click.option("--cutmix", type=click.FloatRange(min=0, max=1), default=0.0, callback=finite, metavar="SHARE",
              help="CutMix for the default model: paste a patch of another training image (a random share of "
                   "the area) into this SHARE of the images, the label mixed by area. 0: none. Kept by --resume.")
@click.option("--average", type=click.FloatRange(min=0, max=1, max_open=True), default=None, callback=finite,
              metavar="DECAY",
              help="Keep a moving average of the default model's weights, each step's decay DECAY (0.999: about "
                   "the last 1,000 steps); validation scores it and the checkpoints hold it. 0: none. Default: "
                   "the recipe's (0.999 for kibble; the tutorial's models take only 0). Kept by --resume.")
@click.option("--label-smoothing", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0,
              callback=finite, metavar="SHARE",
              help="The default model's cross-entropy against targets moved SHARE of the way to uniform (0.1: "
                   "0.05 and 0.95 for two classes). 0: none. Kept by --resume.")
@click.option("--bn-images", type=click.IntRange(min=0), default=None, metavar="N",
              help="Before each validation, recompute the default model's batch normalisation statistics on N "
                   "training images as inference sees them (unaugmented, at the shards' size). 0: keep the "
                   "averages training kept. Default: the recipe's (1000 for kibble; the tutorial's models take "
                   "only 0). Kept by --resume.")
@click.option("--upscale", type=click.FloatRange(min=1, max=MAX_UPSCALE), default=None,
              callback=finite, metavar="FACTOR",
              help="Enlarge the images by FACTOR per side (bilinear) as the default model's first layer, so "
                   "every layer works on larger maps: 1.36 makes 94x125 shards 128x170 inside the model, with 1.85 "
                   "times the positions to compute. Part of the saved model (evaluate and predict need nothing "
                   "more). 1: the images as they are. Default: the recipe's (1.36 for kibble; the tutorial's "
                   "models take only 1). Kept by --resume.")
@seed_option(MAX_SEED, "Seed of the weights, the shuffle and the augmentation.")
@run_dir_option
@runs_option(url=True)
@click.option("--resume", is_flag=True,
              help="Continue the newest run (or --run-dir) with its own settings; only --epochs and --minutes may "
                   "change.")
@click.option("--checkpoint-every", default=DEFAULT_CHECKPOINT_EVERY, show_default=True, callback=checkpoint_interval,
              help="Also commit a checkpoint inside an epoch this often (10m, 90s, 1h, or 500batches; off or 0: "
                   "only at epochs' ends); a resumed run continues from the batch after it.")
@click.option("--no-verify", is_flag=True, help="Skip checking the shards' checksums before training.")
@click.pass_context
def train(ctx, data, cache, stream, full, train_size, val_size, model_name, epochs, minutes, batch_size, lr,
          weight_decay, loss, class_weight, precision, augment, small_first, cutmix, average,
          label_smoothing, bn_images, upscale, seed,
          run_dir, runs_root, resume, checkpoint_every, no_verify):
    """Train a model on the shards, streaming them through tf.data.

    The test split is never read. Running the same command again (or
    `train --resume`) continues an interrupted run from its last checkpoint:
    the end of an epoch, or a mid-epoch one (every 10 minutes by default);
    `train --resume --epochs N` extends a run to N epochs. `train --minutes
    60` trains for a time budget instead of an epoch count. The default
    model's recipe enlarges its images by 1.36 per side as its first layer
    (`--upscale 1`: not, as before 2026-11-28), trains the first half of
    the run on smaller images, validates and saves a moving average of its
    weights, and takes batch normalisation's statistics from unaugmented
    training images (`--small-first 0 --average 0 --bn-images 0`: none, as
    before 2026-11-27).

    \b
    Example:
      python cli.py train --full --model conv2 --precision auto
      python cli.py train --full --minutes 60
      python cli.py train --train-size all --val-size 2500 --minutes 60
      python cli.py train --full --minutes 60 --small-first 0 --average 0 --bn-images 0
      python cli.py train --full --minutes 60 --label-smoothing 0.1
      python cli.py train --full --minutes 60 --upscale 1
      python cli.py train --resume --checkpoint-every 30m
      python cli.py train --runs s3://my-bucket/runs --data s3://my-bucket/shards
    """
    from shards import storage
    from train.remote_run import remote_training
    from train.run import train as run_train
    from train.summary import format_summary

    if full and (train_size or val_size):
        raise click.BadParameter("--full sets both sizes; drop --train-size/--val-size", param_hint="--full")
    sizes = FULL if full else LAPTOP_SAMPLE
    settings = TrainSettings(data=data, model=model_name, train_size=train_size or sizes[0],
                             val_size=val_size or sizes[1], epochs=epochs, lr=lr, loss=loss,
                             batch_size=batch_size, weight_decay=weight_decay, seed=seed, class_weight=class_weight,
                             precision=precision,
                             augment=augment, minutes=minutes, small_first=small_first, cutmix=cutmix,
                             average=average, label_smoothing=label_smoothing, bn_images=bn_images,
                             upscale=upscale)
    # Only sizes typed as numbers must exist; the defaults and --full take what smaller splits hold.
    exact = {name for name, value in (("train_size", train_size), ("val_size", val_size)) if value}
    cache_root = None if cache is not None and cache.strip().lower() == "none" else cache
    with remote_training(run_dir, runs_root, resume, cache_root) as (local_run_dir, local_runs):
        result = run_train(settings, run_dir=local_run_dir, runs_root=local_runs, resume=resume,
                           verify=not no_verify, progress=not ctx.obj["quiet"], given=_given_settings(ctx),
                           exact_sizes=exact, access=access_from(cache, stream), checkpoint_every=checkpoint_every)
    remote = run_dir if storage.is_url(run_dir or "") else runs_root if storage.is_url(runs_root) else None
    if remote is not None:
        url = f"{storage.public(remote).rstrip('/')}" if run_dir else \
            f"{storage.public(runs_root).rstrip('/')}/{os.path.basename(result['run_dir'])}"
        result = {**result, "run_dir": url, "notes": [*result.get("notes", []),
                                                       f"local working copy: {result['run_dir']}"]}
    say(ctx, format_summary(result))


def _given_settings(ctx):
    """TrainSettings fields set by options the user actually gave (not by their defaults)."""
    defaults = (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    return {name for option, names in _TRAIN_FIELDS.items()
            if ctx.get_parameter_source(option) not in defaults for name in names}
