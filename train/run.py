"""`train`: stream the shards into a Keras model, one run directory per run, resumable."""
import contextlib
import csv
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace

from shards.errors import UserError
from shards.manifest import load_manifest, verify_shards, write_json_atomic
from train.models import DEFAULT_MODEL, MODELS, RECIPES
from train.pipeline import WINDOW, plan_blocks
from train.rundir import BEST, CONFIG, HISTORY, LAST, STATE, mark_latest, read_config

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr", "rss_mb", "peak_rss_mb")
LAPTOP_SAMPLE = (4096, 1024)  # the tutorial's train/validation sample
FULL = (10000, 2500)  # the design's full experiment


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of a run; written to config.json so a run can be redone."""

    # Shard folder written by `ingest`.
    data: str = os.path.join("data", "shards")
    # One of train.models.MODELS.
    model: str = DEFAULT_MODEL
    # First N images of the shuffled train / val splits (the test split is never read).
    train_size: int = LAPTOP_SAMPLE[0]
    val_size: int = LAPTOP_SAMPLE[1]
    # None: the model's recipe (train.models.RECIPES).
    epochs: int = None
    lr: float = None
    loss: str = None
    batch_size: int = 32
    seed: int = 0
    # Images mixed together by the input pipeline's shuffle.
    window: int = WINDOW

    def resolved(self):
        """A copy with the model's recipe filled in where a value is None."""
        lr, loss, epochs = RECIPES.get(self.model, (None, None, None))
        return replace(self, lr=self.lr or lr, loss=self.loss or loss, epochs=self.epochs or epochs)

    def validate(self):
        if self.model not in MODELS:
            raise UserError(f"model must be one of {', '.join(MODELS)}. Received: model={self.model!r}")
        for name in ("train_size", "val_size", "epochs", "batch_size", "window"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1. Received: {name}={getattr(self, name)}")
        if self.loss not in (None, "mse", "bce"):
            raise UserError(f"loss must be mse or bce. Received: loss={self.loss!r}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise UserError(f"lr must be between 0 and 1. Received: lr={self.lr}")


def _compile(model, settings, steps_per_epoch):
    import keras

    lr = settings.lr
    if settings.model == DEFAULT_MODEL:
        total = steps_per_epoch * settings.epochs
        warmup = min(steps_per_epoch, total // 10)
        lr = keras.optimizers.schedules.CosineDecay(
            lr / 10, decay_steps=max(1, total - warmup), alpha=0.01, warmup_target=lr, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(lr, weight_decay=1e-4) if settings.model == DEFAULT_MODEL \
        else keras.optimizers.Adam(lr)
    loss = "mean_squared_error" if settings.loss == "mse" else "binary_crossentropy"
    model.compile(optimizer=optimizer, loss=loss, metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])


def _save_atomic(model, path):
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    model.save(tmp)
    os.replace(tmp, path)


def _current_lr(model):
    lr = model.optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def _recorder(run_dir, state):
    """A Keras callback that makes each finished epoch durable, in a fixed order:
    last model, best model, history row, then state.json (the commit point)."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            seconds = time.monotonic() - self.started
            _save_atomic(self.model, os.path.join(run_dir, LAST))
            val_loss = float(logs.get("val_loss", float("inf")))
            if val_loss < state["best_val_loss"]:
                state.update(best_val_loss=val_loss, best_epoch=epoch + 1)
                _save_atomic(self.model, os.path.join(run_dir, BEST))
            row = {"epoch": epoch + 1, "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                   "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
                   "seconds": round(seconds, 2), "lr": _current_lr(self.model), **_memory_mb()}
            _append_history(run_dir, row)
            state["epoch"] = epoch + 1
            state["seconds"] = state.get("seconds", 0) + seconds
            write_json_atomic(os.path.join(run_dir, STATE), state)

    return EpochRecorder()


def _memory_mb():
    """This process's resident memory now and at its peak so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:  # not Linux
        now = peak
    return {"rss_mb": round(now, 1), "peak_rss_mb": round(peak * 1.024, 1)}


def _append_history(run_dir, row):
    path = os.path.join(run_dir, HISTORY)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        f.flush()
        os.fsync(f.fileno())


def _truncate_history(run_dir, epochs_done):
    """Drop history rows past the last committed epoch (a crash between writes)."""
    path = os.path.join(run_dir, HISTORY)
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= epochs_done]
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _read_state(run_dir):
    path = os.path.join(run_dir, STATE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _config(settings, manifest, params):
    height, width, _ = manifest.image_shape
    return {**asdict(settings), "data": os.path.abspath(settings.data), "manifest_sha256": manifest.checksum,
            "image_size": [height, width], "fit": manifest.settings["fit"], "params": params}


_SAME_RUN_KEYS = ("data", "model", "train_size", "val_size", "epochs", "lr", "loss", "batch_size", "seed",
                  "window", "manifest_sha256")


def _find_run(settings, manifest, run_dir, runs_root):
    """Without --resume: (run_dir, state) of an unfinished identical run, or a new run_dir."""
    from train.rundir import latest_run

    if run_dir is None:  # the same command again continues an unfinished identical run
        with contextlib.suppress(UserError, OSError, ValueError):
            candidate = latest_run(runs_root)
            state = _read_state(candidate)
            if _resumable(candidate, settings, manifest) and state["epoch"] < settings.epochs:
                return candidate, state
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return os.path.join(runs_root, f"{settings.model}-{stamp}"), None
    state = _read_state(run_dir) if os.path.isdir(run_dir) else None
    if state is None:
        return run_dir, None
    if not _resumable(run_dir, settings, manifest):
        raise UserError(f"{run_dir} already holds a run with other settings; choose another --run-dir "
                        "or pass --resume to continue it with its own settings")
    return run_dir, state


def _resume_target(run_dir, runs_root):
    """With --resume: the run to continue and its state; its own settings apply."""
    from train.rundir import latest_run

    run_dir = run_dir or latest_run(runs_root)
    state = _read_state(run_dir) if os.path.isdir(run_dir) else None
    if state is None or not os.path.exists(os.path.join(run_dir, LAST)):
        raise UserError(f"{run_dir} has no finished epoch to resume from; start it without --resume")
    config = read_config(run_dir)
    settings = TrainSettings(**{k: config[k] for k in asdict(TrainSettings()) if k in config})
    manifest = load_manifest(settings.data)
    if config["manifest_sha256"] != manifest.checksum:
        raise UserError(f"{run_dir} was trained on other shards than those now in {settings.data} "
                        "(manifest checksum differs); ingest them again with the same settings")
    return run_dir, state, settings, manifest


def _resumable(run_dir, settings, manifest):
    state = _read_state(run_dir)
    if state is None or not os.path.exists(os.path.join(run_dir, LAST)):
        return False
    config = read_config(run_dir)
    wanted = _config(settings, manifest, None)
    return all(config.get(k) == wanted.get(k) for k in _SAME_RUN_KEYS)


def train(settings=TrainSettings(), run_dir=None, runs_root="runs", resume=False, verify=True, progress=True):
    """Train `settings.model` on the first train/val images of the shards.

    Returns a summary dict (run_dir, epochs, best_epoch, best val loss and
    accuracy, seconds per epoch, model bytes). Resumes an unfinished run:
    with `resume`, the newest run or `run_dir`; without it, `run_dir` or the
    newest run when it was started with identical settings.
    Raises UserError for missing or damaged shards and impossible sizes.
    """
    settings.validate()
    settings = settings.resolved()
    if resume:
        run_dir, state, settings, manifest = _resume_target(run_dir, runs_root)
    else:
        manifest = load_manifest(settings.data)
        run_dir, state = _find_run(settings, manifest, run_dir, runs_root)
    if verify:
        problems = verify_shards(manifest, splits=("train", "val"))
        if problems:
            raise UserError(f"{problems[0]} ({len(problems)} shard(s) failed; run `verify` for all, "
                            "`ingest` again to rebuild, or --no-verify to skip this check)")
    plan_blocks(manifest, "train", settings.train_size)  # fail early if there are too few
    plan_blocks(manifest, "val", settings.val_size)

    import keras

    from train.models import build_model
    from train.pipeline import make_dataset

    os.makedirs(run_dir, exist_ok=True)
    start_epoch = state["epoch"] if state else 0
    if state and start_epoch >= settings.epochs:
        return _summary(run_dir, settings, state, already_done=True)
    keras.utils.set_random_seed(settings.seed + start_epoch)
    steps = -(-settings.train_size // settings.batch_size)
    if state:
        try:
            model = keras.models.load_model(os.path.join(run_dir, LAST))
        except Exception as exc:  # noqa: BLE001 - any load failure means the same thing here
            raise UserError(f"cannot load {os.path.join(run_dir, LAST)} to resume ({exc}); start a new run") from None
        _truncate_history(run_dir, start_epoch)
    else:
        model = build_model(settings.model, manifest.image_shape, seed=settings.seed)
        _compile(model, settings, steps)
        state = {"epoch": 0, "best_epoch": None, "best_val_loss": float("inf"), "seconds": 0.0}
        write_json_atomic(os.path.join(run_dir, CONFIG), _config(settings, manifest, model.count_params()))
        for stale in (HISTORY, BEST, LAST):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(run_dir, stale))
    mark_latest(run_dir)

    train_data = make_dataset(manifest, "train", settings.batch_size, settings.train_size, settings.seed,
                              shuffle=True, initial_epoch=start_epoch, window=settings.window)
    val_data = make_dataset(manifest, "val", settings.batch_size, settings.val_size, settings.seed,
                            shuffle=False, window=settings.window)
    callbacks = [_recorder(run_dir, state),
                 keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), update_freq="epoch",
                                             write_graph=False, profile_batch=0)]
    verbose = 0 if not progress else (1 if sys.stderr.isatty() else 2)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras prints progress to stdout
            model.fit(train_data, validation_data=val_data, epochs=settings.epochs, initial_epoch=start_epoch,
                      callbacks=callbacks, verbose=verbose, shuffle=False)
    except KeyboardInterrupt:
        print(f"\nInterrupted after epoch {state['epoch']} of {settings.epochs}. Resume with:\n"
              f"  python cli.py train --resume --run-dir {run_dir}", file=sys.stderr)
        raise
    except Exception as exc:  # noqa: BLE001 - a shard failing inside tf.data arrives wrapped
        message = str(exc)
        if "shard " in message:
            line = next(line for line in message.splitlines() if "shard " in line)
            raise UserError(f"{line.strip()}; after fixing it (run `ingest` again), "
                            f"`train --resume --run-dir {run_dir}` continues from epoch {state['epoch']}") from None
        raise
    return _summary(run_dir, settings, state)


def _summary(run_dir, settings, state, already_done=False):
    from train.rundir import read_history

    history = read_history(run_dir)
    best = next((row for row in history if row["epoch"] == state.get("best_epoch")), {})
    best_path = os.path.join(run_dir, BEST)
    return {
        "run_dir": run_dir,
        "model": settings.model,
        "epochs": state["epoch"],
        "best_epoch": state.get("best_epoch"),
        "best_val_loss": best.get("val_loss"),
        "best_val_accuracy": best.get("val_accuracy"),
        "seconds_per_epoch": (sum(r["seconds"] for r in history) / len(history)) if history else None,
        "model_bytes": os.path.getsize(best_path) if os.path.exists(best_path) else None,
        "already_done": already_done,
    }
