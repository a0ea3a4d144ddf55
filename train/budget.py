"""`train --minutes N`: a learning-rate schedule and a stop that follow a wall-clock budget.

The budget counts what history.csv's `seconds` column counts: each epoch
from its start to the end of its validation pass (mid-epoch checkpoints
included), summed over every epoch and every resume (state.json's `seconds`, plus
`epoch_seconds` of a mid-epoch checkpoint). Process start-up, loading the
shards and writing the epoch-end checkpoints are not counted.

The schedule is a function of the fraction of the budget used, not of the
step count, so a slower machine runs fewer steps along the same curve
instead of stopping halfway down it. The fraction lives in a tf.Variable
that a callback sets after every batch: the compiled train step reads it,
so nothing is traced again.
"""
import functools
import math
import re

from shards.errors import UserError

# The schedule: warm-up from peak/10 to the peak over this share of the budget,
# then a cosine to FLOOR x peak at its end (the default recipe's shape over epochs).
WARMUP = 0.05
FLOOR = 0.01
# The one grammar of durations on the command line (--minutes, --checkpoint-every).
_SECONDS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h)?$")


def duration_seconds(value, bare_unit):
    """Seconds in "90s", "20m", "20min", "1.5h", or in a number without a unit, which is in `bare_unit` ("s" or "m").

    None when `value` is none of these (negative, nan, inf, exponents and other words included).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) * _SECONDS[bare_unit] if math.isfinite(value) and value >= 0 else None
    found = _DURATION.match(str(value).strip().lower())
    return float(found.group(1)) * _SECONDS[found.group(2) or bare_unit] if found else None


def parse_minutes(value):
    """Minutes (float > 0) from 20, "20", "20m", "90s", "1.5h"; a number without a unit is minutes.

    Raises UserError naming the value otherwise (0, negative, nan, inf, other units).
    """
    seconds = duration_seconds(value, "m")
    minutes = None if seconds is None else seconds / 60
    if not minutes:
        raise UserError("minutes must be a training time greater than 0, in minutes (20) or with a unit "
                        f"(90s, 20m, 1.5h). Received: minutes={value!r}")
    return minutes


def budget_fraction(seconds, steps, budget_seconds, total_steps=None):
    """The share of the budget used: of the time, or of the steps when an epoch cap also bounds the run."""
    used = seconds / budget_seconds
    return max(used, steps / total_steps) if total_steps else used


def budget_lr(fraction, peak, warmup=WARMUP, floor=FLOOR):
    """The learning rate at `fraction` of the budget (plain Python; the schedule computes the same in the graph)."""
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction < warmup:
        return peak / 10 + (peak - peak / 10) * fraction / warmup
    cosine = 0.5 * (1 + math.cos(math.pi * (fraction - warmup) / (1 - warmup)))
    return peak * (floor + (1 - floor) * cosine)


@functools.cache
def _schedule_class():
    """BudgetSchedule, defined on first use so that importing train.budget does not import TensorFlow."""
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="kibble", name="BudgetSchedule")
    class BudgetSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """Warm-up, then a cosine to floor x peak, over the fraction of a time budget used.

        `clock` (seconds of the budget used) is set from outside, by
        BudgetClock after every batch. Saved with the optimizer in
        last.keras (its config, not the clock: a resumed run sets the clock
        from state.json), so a resumed run continues the same curve; a
        budget extended later (`--resume --minutes`) leaves it as it was.
        """

        def __init__(self, peak, budget_seconds, total_steps=None, warmup=WARMUP, floor=FLOOR):
            self.peak, self.budget_seconds, self.total_steps = float(peak), float(budget_seconds), total_steps
            self.warmup, self.floor = float(warmup), float(floor)
            self.clock = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="budget_clock")

        def __call__(self, step):
            fraction = self.clock / self.budget_seconds
            if self.total_steps:
                fraction = tf.maximum(fraction, tf.cast(step, tf.float32) / float(self.total_steps))
            fraction = tf.clip_by_value(fraction, 0.0, 1.0)
            start = self.peak / 10
            rising = start + (self.peak - start) * fraction / self.warmup
            cosine = 0.5 * (1 + tf.cos(math.pi * (fraction - self.warmup) / (1 - self.warmup)))
            falling = self.peak * (self.floor + (1 - self.floor) * cosine)
            return tf.where(fraction < self.warmup, rising, falling)

        def get_config(self):
            return {"peak": self.peak, "budget_seconds": self.budget_seconds, "total_steps": self.total_steps,
                    "warmup": self.warmup, "floor": self.floor}

    return BudgetSchedule


def register():
    """Make BudgetSchedule known to Keras, so that a last.keras holding one loads with its optimizer."""
    _schedule_class()


def make_schedule(peak, budget_seconds, total_steps=None):
    return _schedule_class()(peak, budget_seconds, total_steps)


def schedule_of(model):
    """The model's BudgetSchedule, or None (a tutorial model's constant rate, or an epoch-based run).

    Keras keeps an optimizer's schedule in `_learning_rate` and offers no
    public accessor; tests/test_budget.py fails if that ever changes.
    """
    schedule = getattr(getattr(model, "optimizer", None), "_learning_rate", None)
    cls = _schedule_class()
    return schedule if isinstance(schedule, cls) else None


class BudgetClock:
    """The budget's bookkeeping for one `train`: seconds used, the schedule's clock, when to stop.

    `set(epoch_elapsed)` returns the committed seconds plus the current epoch's;
    the run stops at a batch's end once that plus the last validation's
    length reaches the budget, so the partial epoch's own validation pass
    still fits (a resumed run takes that length from state.json; a new one
    has none for its first epoch). After an epoch, it starts another only
    when that one can train at least as long as it validates.
    """

    def __init__(self, budget_seconds, committed_seconds=0.0, schedule=None, epoch_elapsed=0.0,
                 validation_seconds=0.0):
        self.budget_seconds, self.schedule = budget_seconds, schedule
        self.committed = committed_seconds
        self.validation_seconds = validation_seconds
        self.stopped = False  # set by the callback that stopped the training
        self.set(epoch_elapsed)  # a run resumed mid-epoch: that epoch's seconds before the checkpoint

    def set(self, epoch_elapsed):
        """Update the schedule's clock; returns the seconds used."""
        used = self.committed + epoch_elapsed
        if self.schedule is not None:
            self.schedule.clock.assign(used)
        return used

    def spent(self, epoch_elapsed):
        """Set the clock; whether the budget is used (leaving room for the epoch's validation)."""
        return self.set(epoch_elapsed) + self.validation_seconds >= self.budget_seconds

    def epoch_done(self, epoch_seconds, validation_seconds):
        self.committed += epoch_seconds
        self.validation_seconds = validation_seconds
        self.set(0.0)

    def another_epoch_pays(self):
        """Whether, after an epoch, the budget left trains at least as long as the next epoch's validation.

        Otherwise the run stops there: an epoch started with less would
        spend most of its time validating a few batches (a 60-minute run
        once began an epoch at minute 59.2, trained 1 batch and validated
        for 51 s).
        """
        left = self.budget_seconds - self.committed - self.validation_seconds
        return left >= self.validation_seconds


def budget_progress(clock, epochs=None):
    """Keras's progress logger, its epoch line naming the budget ("Epoch 3: 8.2 of 20 min ... used").

    Keras would print "Epoch 3/1000000" for a run that only a time budget
    bounds (`epochs` None), and the whole epoch's count of batches for the
    one the budget cut short.
    """
    import keras

    class BudgetProgbar(keras.callbacks.ProgbarLogger):
        def on_epoch_begin(self, epoch, logs=None):
            self.epochs = 1  # silences Keras's own "Epoch i/N" line
            super().on_epoch_begin(epoch, logs)
            if self.verbose:
                of = f"/{epochs}" if epochs else ""
                print(f"Epoch {epoch + 1}{of}: {clock.committed / 60:.1f} of {clock.budget_seconds / 60:g} min of "
                      "the time budget used", flush=True)

        def on_epoch_end(self, epoch, logs=None):
            if clock.stopped and self.progbar is not None:
                self.target = self.progbar.target = self.seen
            super().on_epoch_end(epoch, logs)

    return BudgetProgbar()
