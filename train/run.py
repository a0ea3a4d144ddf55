"""`train`: stream the shards into a Keras model, one run directory per run, resumable."""
import contextlib
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace

from shards import storage
from shards.errors import UserError
from shards.manifest import verify_shards
from train import averaging
from train.budget import (BudgetClock, budget_fraction, budget_progress, duration_seconds, make_schedule,
                          parse_minutes, schedule_of)
from train.budget import register as register_budget_schedule
from train.mixing import register as register_mixing_metric
from train.mixing import rounded_binary_accuracy
from train.models import AUGMENTS, DEFAULT_AUGMENT, DEFAULT_MODEL, MAX_UPSCALE, MODELS, RECIPES, Recipe
from train.models import register as register_layers
from train.pipeline import WINDOW, plan_blocks, worker_batches
from train.precision import PRECISIONS, dtype_policy, load_model_in_float32, resolve_precision
from train.rundir import HISTORY_FIELDS, RunDir, Runs, whole_epochs  # noqa: F401 - HISTORY_FIELDS re-exported

LAPTOP_SAMPLE = (4096, 1024)  # the tutorial's train/validation sample
FULL = (10000, 2500)  # the design's full experiment
ALL_IMAGES = 2 ** 62  # a size that asks for all a split holds (`train --train-size all`), cut by _sizes_held
CLASS_WEIGHTS = ("none", "balanced")
# Seeds go to NumPy's legacy seeding (below 2**32) as seed + epoch.
MAX_SEED = 2**31 - 1
# The epochs model.fit is given when only a time budget (--minutes) bounds the run.
NO_EPOCH_CAP = 1_000_000
# --small-first's images per side: 94x125 shards train at 64x85, 46% of the pixels, in about half the time per epoch.
SMALL_SCALE = 0.68


_FIRST = object()  # `_setting`'s `absent` for the settings the first config.json already held


def _setting(default, absent=_FIRST, may_grow=False):
    """A TrainSettings field, with what the run's bookkeeping needs to know of it.

    `absent`: for a setting added after runs were first written, what a
    config.json that leaves it out meant (a value, or a function of the
    config). `may_grow`: --resume may give it a new value (the run is
    extended); every other setting is fixed for the run's life
    (FIXED_ON_RESUME).
    """
    return field(default=default, metadata={"absent": absent, "may_grow": may_grow})


def _old_weight_decay(config):
    # The weight decay every default-model run had before it was a setting (the tutorial's models had none).
    return 1e-4 if config.get("model") == DEFAULT_MODEL else 0.0


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of a run; written to config.json so a run can be redone.

    A new setting is one field here, made with `_setting` (what an older
    config.json without it meant); resume, the same-run check and old
    configs read that.
    """

    # Shard folder written by `ingest`.
    data: str = os.path.join("data", "shards")
    # One of train.models.MODELS.
    model: str = DEFAULT_MODEL
    # First N images of the shuffled train / val splits (the test split is never read).
    train_size: int = LAPTOP_SAMPLE[0]
    val_size: int = LAPTOP_SAMPLE[1]
    # None: the model's recipe (train.models.RECIPES).
    epochs: int = _setting(None, may_grow=True)
    lr: float = None
    loss: str = None
    # None: the model's recipe (16 for the default model, 32 for the tutorial's).
    batch_size: int = None
    # AdamW's decoupled weight decay, multiplied by the learning rate at each step. None: the model's recipe;
    # the tutorial's models take only 0 (their Adam).
    weight_decay: float = _setting(None, absent=_old_weight_decay)
    # 0 <= seed <= MAX_SEED: weights, shuffle order and augmentation.
    seed: int = 0
    # Images mixed together by the input pipeline's shuffle.
    window: int = WINDOW
    # "balanced": weigh each class's loss by n / (classes * images of the class), for uneven sets.
    class_weight: str = _setting("none", absent="none")
    # auto, float32 or bfloat16 (train.precision); None: the model's recipe. train() resolves it to float32 or
    # bfloat16, so config.json names the one used.
    precision: str = _setting(None, absent="float32")
    # The default model's training augmentation, one of train.models.AUGMENTS ("photo" adds crops of other
    # aspects and colour changes); the tutorial's models have none and take only the default.
    augment: str = _setting(DEFAULT_AUGMENT, absent=DEFAULT_AUGMENT)
    # Training time budget in minutes (train.budget): the run stops when it is used, and the default
    # model's learning rate anneals over it. None: epochs alone bound the run. With a budget,
    # `epochs` is an upper bound, None for none (the recipe's count is not filled in).
    minutes: float = _setting(None, absent=None, may_grow=True)
    # The default model trains the first `small_first` share of the run (of the time budget, or of the
    # epochs) on images scaled by SMALL_SCALE per side, then on the shards' size; 0: always that size.
    # None: the model's recipe (0.5 for the default model since 2026-11-27; runs before it had 0).
    small_first: float = _setting(None, absent=0.0)
    # The default model's CutMix (train.mixing): the share of training images that get a patch of another; 0: none.
    cutmix: float = _setting(0.0, absent=0.0)
    # The default model's moving average of its weights (train.averaging): its decay per step, below 1; the
    # average is what validation scores and the checkpoints hold. 0: none. None: the model's recipe (0.999 for
    # the default model since 2026-11-27; runs before it had 0).
    average: float = _setting(None, absent=0.0)
    # The default model's label smoothing (Keras's cross-entropy): each target moves this share of the way to
    # the uniform one (0/1 -> share/2 and 1 - share/2 for two classes). 0: none.
    label_smoothing: float = _setting(0.0, absent=0.0)
    # The default model's batch normalisation statistics, recomputed before each validation on this many training
    # images as inference sees them (train.statistics: no augmentation, the shards' size); 0: the moving averages
    # kept in training. None: the model's recipe (1000 for the default model since 2026-11-27; runs before had 0).
    bn_images: int = _setting(None, absent=0)
    # The default model enlarges its input by this factor per side before anything else (train.models.upscale_layer):
    # larger maps at every stage for the same images, up to its square in time per step (1.36: 1.3-1.7 times
    # measured, docs/results.md). 1: as given. None: the model's recipe (1.36 for the default model since
    # 2026-11-28; runs before it had 1).
    upscale: float = _setting(None, absent=1.0)

    def resolved(self, num_classes=2):
        """A copy with the model's recipe filled in where a value is None.

        The tutorial's recipes use MSE, a two-class idea (a sigmoid against
        0/1 targets); with more classes their loss is cross-entropy ("bce"
        then means sparse categorical cross-entropy).
        """
        # An unknown model gets None everywhere: validate() names it.
        recipe = RECIPES.get(self.model) or Recipe(*(None,) * len(Recipe._fields))
        loss = "bce" if num_classes > 2 else recipe.loss
        epochs = self.epochs or (None if self.minutes else recipe.epochs)
        # Given values are kept, 0 included; None takes the recipe's.
        kept = {name: getattr(recipe, name) if getattr(self, name) is None else getattr(self, name)
                for name in ("weight_decay", "small_first", "average", "bn_images", "upscale")}
        return replace(self, lr=self.lr or recipe.lr, loss=self.loss or loss, epochs=epochs,
                       batch_size=self.batch_size or recipe.batch_size, precision=self.precision or recipe.precision,
                       **kept)

    def check_resolved(self, *names):
        """A ValueError if one of these settings, read as "off" when None, is still None (resolved() fills it in)."""
        unresolved = [name for name in names if getattr(self, name) is None]
        if unresolved:
            raise ValueError(f"{', '.join(unresolved)} still the recipe's: call TrainSettings.resolved() first")

    @property
    def epoch_cap(self):
        """Epochs the run may train: `epochs`, or NO_EPOCH_CAP when only the time budget bounds it."""
        return self.epochs or NO_EPOCH_CAP

    def validate(self):
        if not isinstance(self.data, str) or not self.data:
            raise UserError(f"data must name a shard folder. Received: data={self.data!r}")
        if self.model not in MODELS:
            raise UserError(f"model must be one of {', '.join(MODELS)}. Received: model={self.model!r}")
        for name in ("train_size", "val_size", "epochs", "batch_size", "window"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1. Received: {name}={getattr(self, name)}")
        if self.loss not in (None, "mse", "bce"):
            raise UserError(f"loss must be mse or bce. Received: loss={self.loss!r}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise UserError(f"class_weight must be one of {', '.join(CLASS_WEIGHTS)}. "
                            f"Received: class_weight={self.class_weight!r}")
        if self.precision not in (None, *PRECISIONS):
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}. Received: precision={self.precision!r}")
        if self.augment not in AUGMENTS or (self.augment != DEFAULT_AUGMENT and self.model != DEFAULT_MODEL):
            raise UserError(f"augment must be one of {', '.join(AUGMENTS)}, and {DEFAULT_AUGMENT} for the tutorial's "
                            f"models (they have no augmentation). Received: augment={self.augment!r} with "
                            f"model={self.model!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and 0 < self.lr < 1):
            raise UserError(f"lr must be between 0 and 1. Received: lr={self.lr}")
        decay = self.weight_decay
        if decay is not None and (isinstance(decay, bool) or not isinstance(decay, (int, float))
                                  or not (math.isfinite(decay) and 0 <= decay < 1)
                                  or (decay and self.model != DEFAULT_MODEL)):
            raise UserError(f"weight_decay must be from 0 up to (not including) 1, and 0 for the tutorial's models "
                            f"(they train with plain Adam). Received: weight_decay={self.weight_decay!r} with "
                            f"model={self.model!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed must be a whole number from 0 to {MAX_SEED}. Received: seed={self.seed!r}")
        if self.minutes is not None:
            if isinstance(self.minutes, (str, bool)):  # the command line parses "90s" or "1.5h" into minutes
                raise UserError(f"minutes must be a number of minutes. Received: minutes={self.minutes!r}")
            parse_minutes(self.minutes)
        self._check_share("small_first", below_one=True, why="they take one image size")
        self._check_share("cutmix", below_one=False, why="they keep the tutorial's training")
        self._check_share("average", below_one=True, why="they keep the tutorial's training")
        self._check_share("label_smoothing", below_one=True, why="they keep the tutorial's training")
        images = self.bn_images
        if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 0
                                   or (images and self.model != DEFAULT_MODEL)):
            raise UserError(f"bn_images must be a whole number from 0, and 0 for the tutorial's models (they have no "
                            f"batch normalisation). Received: bn_images={images!r} with model={self.model!r}")
        upscale = self.upscale
        if upscale is not None and (isinstance(upscale, bool) or not isinstance(upscale, (int, float))
                                    or not (math.isfinite(upscale) and 1 <= upscale <= MAX_UPSCALE)
                                    or (upscale != 1 and self.model != DEFAULT_MODEL)):
            raise UserError(f"upscale must be from 1 to {MAX_UPSCALE:g}, and 1 for the tutorial's models (they stay "
                            f"as the tutorial built them). Received: upscale={upscale!r} with "
                            f"model={self.model!r}")
        if self.label_smoothing and self.loss == "mse":
            raise UserError(f"label_smoothing needs the cross-entropy loss (bce). Received: label_smoothing="
                            f"{self.label_smoothing!r} with loss='mse'")

    def _check_share(self, name, below_one, why):
        """A UserError unless setting `name` is a share from 0 (to 1, or up to but not including 1 when
        `below_one`) and 0 for the tutorial's models (`why` says why they take none)."""
        value = getattr(self, name)
        if value is None:  # the model's recipe's (resolved)
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not (0 <= value < 1 if below_one else 0 <= value <= 1) or (value and self.model != DEFAULT_MODEL):
            upto = "up to (not including) 1" if below_one else "to 1"
            raise UserError(f"{name} must be a share from 0 {upto}, and 0 for the tutorial's models ({why}). "
                            f"Received: {name}={value!r} with model={self.model!r}")


@dataclass(frozen=True)
class CheckpointEvery:
    """How often a mid-epoch checkpoint is committed; both None: only at epochs' ends."""

    # Seconds since the last commit (a mid-epoch one or the epoch's start).
    seconds: float = None
    # Or batches since then: deterministic, for tests and for epochs of known pace.
    batches: int = None

    @property
    def enabled(self):
        return bool(self.seconds or self.batches)


DEFAULT_CHECKPOINT_EVERY = "10m"
_BATCHES = re.compile(r"^(\d+)\s*batch(?:es)?$")


def parse_checkpoint_every(value):
    """CheckpointEvery from "10m", "90s", "1.5h", "500batches", "off" or "0" (or seconds as a number).

    A number without a unit is seconds. Raises UserError naming the value otherwise.
    """
    if isinstance(value, CheckpointEvery):
        return value
    text = str(value).strip().lower()
    if text == "off":
        return CheckpointEvery()
    batches = _BATCHES.match(text) if isinstance(value, str) else None
    if batches:
        return CheckpointEvery(batches=int(batches.group(1)) or None)
    seconds = duration_seconds(value, "s")
    if seconds is None:
        raise UserError("checkpoint_every must be a duration such as 10m, 90s or 1h, a count such as 500batches, "
                        f"or off (0). Received: checkpoint_every={value!r}")
    return CheckpointEvery(seconds=seconds or None)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the run keeps every epoch committed before it.

    The command line turns it into its own words (how to resume); the
    library only says where the run stands.
    """

    def __init__(self, run_dir, epoch, epochs):
        self.run_dir, self.epoch, self.epochs = run_dir, epoch, epochs
        of = f" of {epochs}" if epochs else ""  # None: a time budget, not an epoch count, bounds the run
        super().__init__(f"training of {run_dir} stopped after epoch {epoch}{of}")


# Settings a run keeps for good: with --resume they come from config.json,
# and giving another value is refused. Only `epochs` and `minutes` may grow (extension).
FIXED_ON_RESUME = tuple(f.name for f in fields(TrainSettings) if not f.metadata.get("may_grow"))


def _compile(model, settings, steps_per_epoch, num_classes=2):
    import keras

    settings.check_resolved("average", "small_first")
    lr = settings.lr
    if settings.model == DEFAULT_MODEL and settings.minutes:
        # Over the time budget; an epoch cap given with it also ends the curve if it comes first.
        lr = make_schedule(lr, settings.minutes * 60, steps_per_epoch * settings.epochs if settings.epochs else None)
    elif settings.model == DEFAULT_MODEL:
        total = steps_per_epoch * settings.epochs
        warmup = min(steps_per_epoch, total // 10)
        lr = keras.optimizers.schedules.CosineDecay(
            lr / 10, decay_steps=max(1, total - warmup), alpha=0.01, warmup_target=lr, warmup_steps=warmup)
    if settings.average:
        optimizer = averaging.averaging_adamw(lr, settings.weight_decay, settings.average)
    elif settings.model == DEFAULT_MODEL:
        optimizer = keras.optimizers.AdamW(lr, weight_decay=settings.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(lr)
    # Named "accuracy" whatever the labels, so history.csv keeps its columns. CutMix's labels are soft
    # (train.mixing): one-hot rows for more than two classes, and rounded before the two-class accuracy.
    # Label smoothing with more than two classes also takes one-hot rows (the sparse loss has no smoothing).
    smoothing = settings.label_smoothing
    if one_hot_labels(settings, num_classes):
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing) if smoothing \
            else "categorical_crossentropy"
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    elif num_classes > 2:
        loss, accuracy = "sparse_categorical_crossentropy", keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    else:
        loss = "mean_squared_error" if settings.loss == "mse" else \
            keras.losses.BinaryCrossentropy(label_smoothing=smoothing) if smoothing else "binary_crossentropy"
        accuracy = rounded_binary_accuracy() if settings.cutmix else keras.metrics.BinaryAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])


def one_hot_labels(settings, num_classes):
    """Whether the run's labels are one-hot rows: more than two classes, with CutMix or label smoothing."""
    return num_classes > 2 and bool(settings.cutmix or settings.label_smoothing)


def _current_lr(model):
    lr = model.optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def small_epoch(settings, state):
    """Whether the next epoch of a `small_first` run trains on smaller images.

    It does while the share of the run used before the epoch starts (of the
    time budget, else of the epochs) is below `small_first`, and until an
    epoch has trained at the shards' size: a budget or epoch count extended
    later (--resume) never goes back to small images.
    """
    settings.check_resolved("small_first")
    if not settings.small_first or any(row.get("scale", 1.0) == 1.0 for row in state.get("history", [])):
        return False
    epoch, seconds = state.get("epoch", 0), state.get("seconds", 0.0)
    # The budget's share, or the epochs' when they also bound it (as the schedule's), or the epochs' alone.
    used = budget_fraction(seconds, epoch, settings.minutes * 60, settings.epochs) if settings.minutes \
        else epoch / settings.epochs if settings.epochs else 0.0
    return used < settings.small_first


def _small_first(settings, state, size, image_shape):
    """A Keras callback setting `size` (train.pipeline.image_size_variable) at each epoch's start; `scale`
    is the epoch's scale per side (SMALL_SCALE or 1), for its history row."""
    import keras

    from train.pipeline import smaller_size

    class SmallFirst(keras.callbacks.Callback):
        scale = 1.0

        def on_epoch_begin(self, epoch, logs=None):
            # Before the epoch's first batch is made: tf.data starts producing at the first one asked for.
            self.scale = SMALL_SCALE if small_epoch(settings, state) else 1.0
            size.assign(smaller_size(image_shape, self.scale) if self.scale != 1.0 else list(image_shape[:2]))

    return SmallFirst()


def _recorder(run, state, steps, every=CheckpointEvery(), clock=None, scale=None, statistics=None):
    """A Keras callback that commits each finished epoch to `run` (RunDir.commit_epoch),
    and every `every` (CheckpointEvery) a mid-epoch checkpoint of the batches done so far,
    and keeps `state` equal to the committed state. `steps`: batches per epoch.
    `clock` (train.budget.BudgetClock, for a time budget) is told the seconds used after
    every batch and stops the training when the budget is used; the partial epoch is then
    validated and committed like a whole one, its row's `batches` saying how many it trained.
    `scale` (a `_small_first` callback) gives the epoch's row its image scale. `statistics`
    (a `_statistics_callback`) refreshes batch normalisation's statistics before a mid-epoch
    checkpoint (validation refreshes them before the epoch's own)."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = self.committed = self.last_batch = time.monotonic()
            # A run resumed inside this epoch: its first batches were trained before.
            self.skipped = self.committed_batches = self.done = state.get("batches", 0)
            self.before = state.get("epoch_seconds", 0.0)

        def on_train_batch_end(self, batch, logs=None):
            # The run's first step traced the train function: hand back what only that touched
            # (each epoch's end releases what validation and saving touched).
            if not getattr(self, "traced", False):
                self.traced = True
                _release_pages()
            done = self.done = self.skipped + batch + 1
            self.last_batch = time.monotonic()
            if clock is not None and clock.spent(self.before + self.last_batch - self.started):
                clock.stopped = self.model.stop_training = True
                return
            if not every.enabled or done >= steps:  # the epoch's own commit follows
                return
            now = time.monotonic()
            if (every.batches and done - self.committed_batches < every.batches) or \
                    (every.seconds and now - self.committed < every.seconds):
                return
            new = {**state, "batches": done, "epoch_seconds": self.before + now - self.started}
            with averaging.in_model(self.model):  # a checkpoint holds the average as its weights (if any)
                if statistics is not None:
                    statistics.refresh()
                run.commit_epoch(self.model, new)
            state.update(new)
            self.committed, self.committed_batches = time.monotonic(), done

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            now = time.monotonic()
            seconds = self.before + now - self.started
            if clock is not None:
                clock.epoch_done(seconds, validation_seconds=now - self.last_batch)
                if not clock.another_epoch_pays():  # too little left to train more than it would validate
                    clock.stopped = self.model.stop_training = True
            row = {"epoch": epoch + 1, **{k: _number(logs.get(k)) for k in HISTORY_FIELDS[1:5]},
                   "seconds": round(seconds, 2), "lr": _current_lr(self.model), **_memory_mb(),
                   "resumed_at_batch": self.skipped, "batches": self.done}
            if scale is not None:
                row["scale"] = scale.scale
            # The validation's length is kept for a resumed --minutes run: it stops early enough to validate.
            new = {**{k: v for k, v in state.items() if k not in ("batches", "epoch_seconds")},
                   "epoch": epoch + 1, "seconds": state.get("seconds", 0) + seconds,
                   "validation_seconds": round(now - self.last_batch, 2), "history": [*state["history"], row]}
            val_loss = float(logs.get("val_loss", float("inf")))
            if val_loss < state["best_val_loss"]:
                new.update(best_val_loss=val_loss, best_epoch=epoch + 1)
            if clock is not None and clock.stopped:  # the budget it stopped at: done until it is extended
                new["budget_stop_seconds"] = clock.budget_seconds
            with averaging.in_model(self.model):
                run.commit_epoch(self.model, new)
            state.clear()
            state.update(new)
            _release_pages()  # validation and saving map library code once an epoch

    return EpochRecorder()


def _release_pages():
    from train.tf_env import applied, release_library_pages

    if applied().get("released_mb") is not None:  # the process was set up to release them
        release_library_pages()


def _number(value):
    return None if value is None else float(value)


def _memory_mb():
    """This process's resident memory now and at its peak so far, in MB (psutil, any OS)."""
    import psutil

    info = psutil.Process().memory_info()
    _peak[0] = max(_peak[0], info.rss, getattr(info, "peak_wset", 0), _kernel_peak())
    return {"rss_mb": round(info.rss / 1e6, 1), "peak_rss_mb": round(_peak[0] / 1e6, 1)}


_peak = [0]


def _kernel_peak():
    """The kernel's own peak RSS in bytes where it keeps one (Linux, macOS), else 0.

    ru_maxrss is in KiB on Linux and in bytes on macOS; Windows has no
    `resource` module (psutil's peak_wset covers it).
    """
    try:
        import resource
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _config(settings, manifest, params):
    height, width, _ = manifest.image_shape
    return {**asdict(settings), "data": storage.absolute(settings.data), "manifest_sha256": manifest.checksum,
            "image_size": [height, width], "fit": manifest.settings["fit"], "classes": manifest.classes,
            "params": params}


# What must match for a run to be the same one: every setting, and the shards it trained on.
_SAME_RUN_KEYS = (*(f.name for f in fields(TrainSettings)), "manifest_sha256")


def _with_old_defaults(config):
    """A config.json's settings, with what one written before a setting existed meant by leaving it out."""
    old = {f.name: absent(config) if callable(absent) else absent
           for f in fields(TrainSettings) if (absent := f.metadata.get("absent", _FIRST)) is not _FIRST}
    return {**old, **config}


def _same_run(run, settings, manifest):
    """Whether `run` was started with exactly these settings on these shards."""
    try:
        config = _with_old_defaults(run.config())
    except UserError:
        return False
    wanted = _config(settings, manifest, None)
    return all(config.get(k) == wanted.get(k) for k in _SAME_RUN_KEYS)


def _unfinished_same_run(settings, manifest, runs):
    """The newest run of `runs` if it is unfinished and identical to this one, else None."""
    with contextlib.suppress(UserError, OSError, ValueError):
        candidate = runs.latest()
        state = candidate.state()
        if state and not _finished(settings, state) and candidate.has_model(state) \
                and _same_run(candidate, settings, manifest):
            return candidate
    return None


def _finished(settings, state):
    """Whether committed `state` has trained every epoch allowed or used the whole time budget."""
    return state["epoch"] >= settings.epoch_cap or _budget_used(settings, state)


def _budget_used(settings, state):
    """Whether the run stopped at its present budget, or has trained for all of it."""
    if not settings.minutes:
        return False
    budget = settings.minutes * 60
    return state.get("budget_stop_seconds") == budget or _seconds_used(state) >= budget


def _seconds_used(state):
    """Seconds of the budget a committed state has used: its epochs' and a mid-epoch checkpoint's."""
    return state.get("seconds", 0.0) + state.get("epoch_seconds", 0.0)


def _given_fields(requested, given):
    """The settings fields the caller chose; by default those that differ from TrainSettings()."""
    if given is not None:
        return set(given)
    default = TrainSettings()
    return {f.name for f in fields(TrainSettings) if getattr(requested, f.name) != getattr(default, f.name)}


def _resume_target(run_dir, runs, requested, given, exact, open_data):
    """With --resume: the run to continue, its own settings, its shards; refuses changed settings.

    Sizes not in `exact` (the default sample, --full) are compared as cut
    to what the run's splits hold, as they were when the run started.
    """
    run = RunDir(run_dir) if run_dir else runs.latest()
    if not os.path.isdir(run.path):
        raise UserError(f"no run directory at {run.path} to resume; start it without --resume")
    config = _with_old_defaults(run.config())
    settings = TrainSettings(**{k: config[k] for k in asdict(TrainSettings()) if k in config})
    try:
        settings.validate()
    except UserError as exc:
        raise UserError(f"{run.file('config.json')} holds a setting train cannot use ({exc}); start a new run") \
            from None
    manifest = open_data(settings.data)
    held, _ = _sizes_held(requested, manifest, exact)  # compared as cut; named as the user gave them
    changed = [_describe(name, getattr(requested, name), getattr(settings, name))
               for name in FIXED_ON_RESUME if name in given and not _same_value(
                   name, getattr(held, name), getattr(settings, name))]
    if changed:
        raise UserError(f"cannot change settings of {run.path} with --resume: {'; '.join(changed)}. "
                        "Drop them to continue the run as it was, or start a new run without --resume")
    if config.get("manifest_sha256") != manifest.checksum:
        raise UserError(f"{run.path} was trained on other shards than those now in {settings.data} "
                        "(manifest checksum differs); ingest them again with the same settings")
    return run, settings, manifest


def _same_value(name, given, own):
    if name == "data":
        return storage.same_place(given, own)
    return given is None or given == own


def _describe(name, given, own):
    return f"--{name.replace('_', '-')} {given} (the run has {own})"


def _extend(run, settings, epochs, done):
    """Set the run's total to `epochs` (given with --resume); returns (settings, note or None).

    The default model's learning rate follows a cosine over the epochs the
    run was started with; its schedule is saved with the optimizer in
    last.keras and is not rebuilt, so epochs added later run at its final
    rate (a fine-tuning tail). Rebuilding it would make the rate jump back
    up mid-run and leave a run no fresh start could repeat.
    """
    if epochs < done:
        raise UserError(f"--epochs {epochs} is fewer than the {done} epochs {run.path} has already finished; "
                        f"give at least {done}")
    if epochs == settings.epochs:
        return settings, None
    config = run.config()
    config["extended_from"] = [*config.get("extended_from", []), config["epochs"]]
    config["epochs"] = epochs
    run.write_config(config)
    note = None
    if settings.model == DEFAULT_MODEL and settings.epochs is not None and epochs > settings.epochs and done > 0:
        note = (f"{settings.model}'s learning-rate schedule was set for {config['extended_from'][0]} epochs "
                f"when the run started; later epochs run at its final rate")
    return replace(settings, epochs=epochs), note


def _float32_from_here(run, settings, state):
    """A bfloat16 run resumed on a CPU without bfloat16 goes on in float32; returns (settings, note).

    Emulated, bfloat16 would be tens of times slower, and the run's weights
    and optimizer state are float32 in either case. config.json records the
    switch (precision float32 from now on, `precision_changed` saying from
    what and where), so a later resume anywhere keeps float32.
    """
    done = (state or {}).get("epoch", 0)
    config = run.config()
    config["precision"] = "float32"
    config["precision_changed"] = {"from": "bfloat16", "epoch": done, "batches": (state or {}).get("batches", 0)}
    run.write_config(config)
    note = (f"this CPU has no bfloat16 unit (AVX-512 BF16 or AMX): {run.path}, trained in bfloat16 so far, goes on "
            f"in float32 from epoch {done + 1} (same weights and optimizer state; recorded in config.json)")
    return replace(settings, precision="float32"), note


def _extend_budget(run, settings, minutes, state):
    """Set the run's time budget to `minutes` (given with --resume); returns (settings, note or None).

    Like `_extend` for epochs: the default model's schedule keeps the budget
    it was built for (saved in last.keras), so time added later runs at its
    final rate.
    """
    used = _seconds_used(state) / 60 if state else 0.0
    if minutes == settings.minutes:
        return settings, None
    if minutes <= used:
        raise UserError(f"--minutes {minutes:g} is no more than the {used:.2f} minutes {run.path} has already "
                        f"trained; give more than {used:.2f}")
    config = run.config()
    config["minutes_extended_from"] = [*config.get("minutes_extended_from", []), config.get("minutes")]
    config["minutes"] = minutes
    run.write_config(config)
    first = config["minutes_extended_from"][0]
    note = None
    if settings.model == DEFAULT_MODEL and state and state["epoch"] + state.get("batches", 0) > 0:
        note = (f"{settings.model}'s learning-rate schedule was set for "
                + (f"{first:g} minutes" if first else f"{config.get('extended_from', [settings.epochs])[0]} epochs")
                + " when the run started; the time added runs at its final rate")
    return replace(settings, minutes=minutes), note


def _check_shards(manifest, settings, verify):
    # Two classes: index 1 is the positive class of the sigmoid (cat for Dogs vs. Cats).
    if manifest.num_classes < 2:
        raise UserError(f"{manifest.folder} holds {manifest.num_classes} class ({', '.join(manifest.classes)}): "
                        "training needs at least two classes")
    if manifest.num_classes > 2 and settings.loss == "mse":
        raise UserError(f"--loss mse scores one class against another (the tutorial's sigmoid), but {manifest.folder} "
                        f"holds {manifest.num_classes} classes; drop --loss (cross-entropy) or use --loss bce")
    if verify:
        problems = verify_shards(manifest, splits=("train", "val"))
        if problems:
            raise UserError(f"{problems[0]} ({len(problems)} shard(s) failed; run `verify` for all, "
                            "`ingest` again to rebuild, or --no-verify to skip this check)")
    plan_blocks(manifest, "train", settings.train_size)  # fail early if there are too few
    plan_blocks(manifest, "val", settings.val_size)


def _sizes_held(settings, manifest, exact):
    """(settings, notes): a default sample size larger than its split becomes what the split holds.

    A size in `exact` (one the user asked for) is kept, and refused later
    if the split is smaller. ALL_IMAGES, asked for or not, becomes what the split holds, without a note.
    """
    notes, changes = [], {}
    for name, split in (("train_size", "train"), ("val_size", "val")):
        asked, held = getattr(settings, name), manifest.split_count(split)
        if (name not in exact or asked == ALL_IMAGES) and 0 < held < asked:
            changes[name] = held
            if asked < ALL_IMAGES:
                notes.append(f"{split}: {held:,} images (the split holds fewer than the {asked:,} asked)")
    return replace(settings, **changes), notes


def class_weights(counts):
    """{class index: weight} that makes each class weigh as much in the loss (scikit-learn's "balanced").

    weight_c = n / (classes * count_c) over the classes present; a class
    with no image gets no entry (Keras then uses 1.0, never applied).
    """
    present = [c for c in counts if c > 0]
    total = sum(present)
    return {i: total / (len(present) * c) for i, c in enumerate(counts) if c > 0}


def train(settings=TrainSettings(), run_dir=None, runs_root="runs", resume=False, verify=True, progress=True,
          given=None, exact_sizes=None, access=None, checkpoint_every=DEFAULT_CHECKPOINT_EVERY):
    """Train `settings.model` on the first train/val images of the shards.

    Returns a summary dict (run_dir, epochs, best_epoch, best val loss and
    accuracy, seconds per epoch, model bytes). Resumes an unfinished run:
    with `resume`, the newest run or `run_dir`, with its own settings (from
    its last committed epoch, or from the start if none was committed);
    without it, `run_dir` or the newest run when it was started with
    identical settings. `given` names the fields of `settings` the caller
    chose (default: those differing from TrainSettings()); with `resume`,
    a given `epochs` sets the run's new total (extending a finished run), a
    given `minutes` its new time budget, and any other given setting that
    differs from the run's is refused. With `settings.minutes` the run stops
    when that much training and validation time is used (train.budget),
    counted across resumes; `epochs` is then an upper bound.
    A train or val size larger than its split is cut to what the split holds
    (with a note in the result) unless it is in `exact_sizes` (default: the
    sizes in `given`): then it is refused.
    `checkpoint_every` ("10m", "500batches", "off"; parse_checkpoint_every)
    commits a mid-epoch checkpoint that often; a resumed run continues from
    the last one, in the batch after it, reading none of the batches done.
    Holds the run directory's lock while it writes there. `access` (a
    shards.storage.Access) says how shards at a URL are read: cached
    (default) or streamed.
    Raises UserError for missing or damaged shards, impossible sizes, a run
    directory another process is writing, and settings a resume cannot change.
    """
    settings.validate()
    given = _given_fields(settings, given)
    settings = replace(settings, precision=resolve_precision(settings.resolved().precision))
    every = parse_checkpoint_every(checkpoint_every)
    exact = given & {"train_size", "val_size"} if exact_sizes is None else set(exact_sizes)
    requested, notes = settings, []
    runs = Runs(runs_root)

    def open_data(data):
        return storage.open_shards(data, access, splits=("train", "val"), verify=verify, progress=progress)

    if resume:
        run, settings, manifest = _resume_target(run_dir, runs, requested, given, exact, open_data)
    else:
        manifest = open_data(settings.data)
        settings, notes = _sizes_held(settings.resolved(manifest.num_classes), manifest, exact)
        run = RunDir(run_dir) if run_dir else _unfinished_same_run(settings, manifest, runs)
    # Cached copies were checked as they were fetched: not hashed a second time.
    _check_shards(manifest, settings, verify and not storage.is_cached(settings.data, access))
    if run is None:
        run = runs.create(settings.model)
    with run.lock():
        state = run.recover()
        if state is not None and not resume and not _same_run(run, settings, manifest):
            raise UserError(f"{run.path} already holds a run with other settings; choose another --run-dir "
                            "or pass --resume to continue it with its own settings")
        if resume and "epochs" in given:
            settings, note = _extend(run, settings, requested.epochs, state["epoch"] if state else 0)
            notes += [note] if note else []
        if resume and "minutes" in given:
            settings, note = _extend_budget(run, settings, requested.minutes, state)
            notes += [note] if note else []
        if state is not None and _finished(settings, state):
            return _summary(run, settings, state, already_done=True)
        if resume and settings.precision == "bfloat16" and resolve_precision("auto") != "bfloat16":
            settings, note = _float32_from_here(run, settings, state)
            notes.append(note)
        return {**_fit(run, settings, manifest, state, progress, every), "notes": notes}


def _fit(run, settings, manifest, state, progress, every=CheckpointEvery()):
    from train.fused import as_train_runs_it
    from train.tf_env import import_tensorflow, process_settings, save_through_disk

    import_tensorflow(model=settings.model)  # sets the process up (train.tf_env.ProcessSettings) for this model
    if process_settings().save_through_disk:
        save_through_disk()
    import keras

    from train.pipeline import image_size_variable, make_dataset

    start_epoch = state["epoch"] if state else 0
    skip = state.get("batches", 0) if state else 0  # batches of the next epoch done before a kill
    keras.utils.set_random_seed(settings.seed + start_epoch)
    steps = worker_batches(settings.train_size, settings.batch_size)
    with dtype_policy(resolve_precision(settings.precision)):
        model, state = _model(run, settings, manifest, state, steps)
    as_train_runs_it(model, settings.model)
    if settings.average:
        averaging.average_statistics(model, settings.average)
    Runs(os.path.dirname(os.path.abspath(run.path))).mark_latest(run)

    size = image_size_variable(manifest.image_shape) if settings.small_first else None

    def train_data(epoch, skip_batches=0):
        return make_dataset(manifest, "train", settings.batch_size, settings.train_size, settings.seed,
                            shuffle=True, initial_epoch=epoch, window=settings.window, skip_batches=skip_batches,
                            size=size, cutmix=settings.cutmix,
                            one_hot=one_hot_labels(settings, manifest.num_classes))

    # Resumed inside an epoch: one fit of that epoch's remaining batches, then the others.
    phases = [(start_epoch, start_epoch + 1, train_data(start_epoch, skip))] if skip else []
    if start_epoch + bool(skip) < settings.epoch_cap:
        phases.append((start_epoch + bool(skip), settings.epoch_cap, train_data(start_epoch + bool(skip))))
    val_data = make_dataset(manifest, "val", settings.batch_size, settings.val_size, settings.seed,
                            shuffle=False, window=settings.window,
                            one_hot=one_hot_labels(settings, manifest.num_classes))
    clock = BudgetClock(settings.minutes * 60, state.get("seconds", 0.0), schedule_of(model),
                        epoch_elapsed=state.get("epoch_seconds", 0.0),
                        validation_seconds=state.get("validation_seconds", 0.0)) if settings.minutes else None
    scale = _small_first(settings, state, size, manifest.image_shape) if size is not None else None
    statistics = _statistics_callback(model, manifest, settings) if settings.bn_images else None
    callbacks = [*([scale] if scale is not None else []), _recorder(run, state, steps, every, clock, scale, statistics),
                 *([averaging.validation_callback()] if settings.average else []),
                 *([statistics] if statistics is not None else []),
                 keras.callbacks.TensorBoard(run.file("logs"), update_freq="epoch",
                                             write_graph=False, profile_batch=0)]
    verbose = 0 if not progress else (1 if sys.stderr.isatty() else 2)
    if clock is not None:
        callbacks.append(budget_progress(clock, settings.epochs))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras prints progress to stdout
            for first, end, data in phases:
                if _budget_used(settings, state):  # the resumed epoch's remainder used the budget
                    break
                model.fit(data, validation_data=val_data, epochs=end, initial_epoch=first, callbacks=callbacks,
                          verbose=verbose, shuffle=False, class_weight=_fit_class_weight(settings, manifest))
    except KeyboardInterrupt:
        raise TrainingInterrupted(run.path, state["epoch"], settings.epochs) from None
    except (OSError, UserError):
        raise
    except Exception as exc:  # noqa: BLE001 - a shard failing inside tf.data arrives wrapped
        message = str(exc)
        if "shard " in message:
            line = next(line for line in message.splitlines() if "shard " in line)
            where = (f"continues from epoch {state['epoch']}" if state["epoch"]
                     else "starts it again (no epoch had finished)")
            raise UserError(f"{line.strip()}; after fixing it (run `ingest` again), "
                            f"`train --resume --run-dir {run.path}` {where}") from None
        raise
    return _summary(run, settings, state)


def _statistics_callback(model, manifest, settings):
    """train.statistics' callback: the batch normalisation statistics from the first `bn_images` training images
    (of the run's train_size), read in order at the shards' size and unmixed, at each validation's start."""
    from train.pipeline import make_dataset
    from train.statistics import batch_size, refresh_callback

    settings.check_resolved("bn_images")
    count = min(settings.bn_images, settings.train_size)
    images = make_dataset(manifest, "train", batch_size(count), count, settings.seed, shuffle=False,
                          window=settings.window)
    return refresh_callback(model, images)


def _model(run, settings, manifest, state, steps):
    """(model, state): the run's last checkpoint and state to resume, or a new compiled model and a started run."""
    import keras

    from train.models import build_model

    if state:
        register_budget_schedule()  # the optimizer of a --minutes run holds one
        register_mixing_metric()  # a --cutmix run's two-class accuracy
        averaging.register()  # an --average run's optimizer
        register_layers()  # the default model's augmentation and --upscale layers
        try:
            model = (load_model_in_float32(run.checkpoint("last")) if settings.precision == "float32"
                     else keras.models.load_model(run.checkpoint("last")))
        except Exception as exc:  # noqa: BLE001 - any load failure means the same thing here
            raise UserError(f"cannot load {run.checkpoint('last')} to resume ({exc}); start a new run") from None
        state.setdefault("history", run.history())  # a run from before history was part of the state
        averaging.resumed(model)  # the trained weights back in the model, the average in its slot
        return model, state
    model = build_model(settings.model, manifest.image_shape, seed=settings.seed, num_classes=manifest.num_classes,
                        augment=settings.augment, any_size=bool(settings.small_first), upscale=settings.upscale)
    _compile(model, settings, steps, manifest.num_classes)
    run.start(_config(settings, manifest, model.count_params()))
    return model, {"epoch": 0, "best_epoch": None, "best_val_loss": float("inf"), "seconds": 0.0, "history": []}


def _fit_class_weight(settings, manifest):
    """model.fit's class_weight: None, or balanced weights from the train split's class counts.

    The counts are those of the whole train split (the manifest's): the
    first train_size images' counts would need reading every label first.
    The split is stratified at ingest, so a sample's shares are close.
    """
    if settings.class_weight != "balanced":
        return None
    return class_weights(manifest.class_counts("train"))


def _summary(run, settings, state, already_done=False):
    history = run.history()
    best = next((row for row in history if row["epoch"] == state.get("best_epoch")), {})
    best_path = run.checkpoint("best")
    # An epoch a time budget cut short: its batches, and the whole epochs before it.
    steps = worker_batches(settings.train_size, settings.batch_size)
    partial = history[-1].get("batches", steps) if history and history[-1].get("batches", steps) < steps else 0
    whole = whole_epochs(history, steps) or history
    return {
        "run_dir": run.path,
        "model": settings.model,
        "precision": settings.precision,
        "epochs": state["epoch"],
        "best_epoch": state.get("best_epoch"),
        "best_val_loss": best.get("val_loss"),
        "best_val_accuracy": best.get("val_accuracy"),
        "seconds_per_epoch": (sum(r["seconds"] for r in whole) / len(whole)) if whole else None,
        "model_bytes": os.path.getsize(best_path) if os.path.exists(best_path) else None,
        "already_done": already_done,
        "minutes": settings.minutes,
        "minutes_used": round(_seconds_used(state) / 60, 2),
        "stopped_at_budget": _budget_used(settings, state),
        "whole_epochs": state["epoch"] - bool(partial),
        "partial_batches": partial,
        "small_epochs": sum(1 for row in history if row.get("scale", 1.0) != 1.0),
        "notes": [],
    }
