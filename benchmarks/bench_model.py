"""Model benchmark: where a training step's time and memory go, per model and precision.

    python benchmarks/bench_model.py [--quick] [--steps N] [--models kibble,conv2] [--variants [NAME,...]] [--layers]
                                     [--memory SHARDS] [--train-memory SHARDS [--levers NAME,...]]
                                     [--augment standard,photo]

Per model (mlp, conv1, conv2, conv2-wide, kibble) and precision (float32;
bfloat16 only where train.precision says the CPU computes it natively):
milliseconds per training step (batch 32 of 94x125x3 uint8 images, the
model's own recipe: loss, optimizer and schedule as `train` compiles them;
median of N steps after warm-up), FLOPs per image, achieved GFLOP/s, and
its ratio to a plain 3x3 convolution's GFLOP/s (64 -> 64 channels on
32x94x125, forward) measured in the same run (model FLOPs utilisation),
and the peak RSS of the process. Each configuration runs in a fresh
process so peaks do not mix; the reference convolution runs in its own
process before and after the models (the ratio uses their mean).

How FLOPs are counted: analytically from the layers' shapes, a
multiply-add = 2 FLOPs, for Conv2D, SeparableConv2D (depthwise + pointwise)
and Dense; batch norm, activations, pooling and augmentation are not
counted (they are memory-bound, and that is the point: their time shows as
lost utilisation). A training step is counted as 3x the forward pass
(forward, gradients of the inputs, gradients of the weights).

--variants times cheap changes of the default model (step time only; in
each precision the CPU computes natively, as the base rows):
augmentation in the tf.data pipeline instead of in the model, none at all,
Keras's own four augmentation layers (`keras-augment`: the model before
kibble>Augment made their work one resampling, 2026-11-28), jit_compile,
batch 64, dense 3x3 convolutions instead of separable ones (same widths,
and narrower at about the same FLOPs), one thread pool, and
the architecture knobs of train.models._kibble: a stride-4 stem
(`stem-s4`), strided separable convs instead of the 3x3 max-pools
(`no-pool`), both, and the stride-4 stem with dense 3x3 convs at the
default widths (`stem-s4-dense3x3`). The default model is the recipe's,
its input enlarged by the recipe's `upscale` (1.36 since 2026-11-28; the
variants keep it), and `upscale-1` times it without the enlarging.
--layers times every layer of the default model alone (forward and
backward at its input shape) and the optimizer's update, grouped by kind:
"where the step goes". --memory SHARDS measures the RSS of a fresh process
by steps (after import, build, first step, N steps) fed by `train`'s own
pipeline from SHARDS (94x125 shards), with the default prefetch, none, and
glibc's MALLOC_ARENA_MAX=2 and MALLOC_TRIM_THRESHOLD_=0; and the peak of
the later steps alone (Linux: the kernel's high-water mark reset after
step 1), which is what one step's activations add.

--train-memory SHARDS runs the `train` command itself (1 epoch of
--train-size images, default 4,800 = 150 steps, a validation pass and
the epoch's checkpoint) per model, once per process set-up lever
(LEVERS: train.tf_env.ProcessSettings overrides through KIBBLE_PROCESS),
the levers of one model side by side so they share the machine's load;
the whole process tree is sampled from outside every 0.1 s (psutil RSS,
and its anonymous/file split from /proc/<pid>/status). ms/step is the
epoch's seconds (history.csv, validation included) over its steps.

--augment standard,photo times the default model with each training
augmentation (`train --augment`): its step rows run alternately, each
twice (standard, photo, standard, photo), so both share the machine's load;
then one process builds the model with each and alternates their training
steps (A B A B ...), the fairest comparison on a busy machine (median each);
--train-memory then runs `train --augment A` per augmentation too (side by
side with the levers of that model).

Every row records the machine's load average (os.getloadavg) when it
started: on a shared machine, compare rows of one run as ratios.
Not a test; the table goes to stdout, progress to stderr.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from train.tf_env import ONEDNN_ENV, TENSOR_POOL_ENV  # noqa: E402 - after the repository is on the path

SHAPE = (94, 125, 3)
BATCH = 32
MODELS = ("mlp", "conv1", "conv2", "conv2-wide", "kibble")
REF_CHANNELS = 64
# (prefetch batches, environment) of the memory probes: train's default, no prefetch, glibc malloc settings.
MEMORY_CONFIGS = ((2, {}), (0, {}), (2, {"MALLOC_ARENA_MAX": "2"}), (2, {"MALLOC_TRIM_THRESHOLD_": "0"}))
# name: KIBBLE_PROCESS overrides of train.tf_env.ProcessSettings, measured against "default" in --train-memory.
LEVERS = {
    "default": "",
    "malloc-tensors": "tensor_pool=0",
    "no-onednn": "onednn=0",
    "keep-pages": "release_library_pages=0",
    "save-in-memory": "save_through_disk=0",
    "keras-adam": "fused_adam=0",
    "keras-batch-norm": "fused_batch_norm=0",
    "whole-steps": "split_steps=0",
    "dense-chunks": "dense_chunks=1",
    "before": "release_library_pages=0,save_through_disk=0",
    "arena-2": "malloc_arena_max=2",
    "mmap-4MB": "malloc_mmap_threshold=4194304",
    "inter-op-1": "inter_op_threads=1",
    "threads-1-1": "intra_op_threads=1,inter_op_threads=1",
}
VARIANTS = ("base", "augment-in-data", "no-augment", "keras-augment", "jit", "batch16", "batch64", "dense3x3",
            "dense3x3-narrow", "threads-2-1", "stem-s4", "no-pool", "stem-s4-no-pool", "stem-s4-dense3x3", "upscale-1")
# Variants that train the default model on other batch sizes, with the learning rate scaled linearly.
BATCH_VARIANTS = {"batch16": 16, "batch64": 64}
# Variants that build the default model otherwise: train.models._kibble's arguments, and whether its
# separable convs are made dense.
ARCH_VARIANTS = {"stem-s4": ({"stem_stride": 4}, False), "no-pool": ({"pool": False}, False),
                 "stem-s4-no-pool": ({"stem_stride": 4, "pool": False}, False),
                 "dense3x3": ({}, True), "dense3x3-narrow": ({"widths": (24, 48, 88, 128)}, True),
                 "stem-s4-dense3x3": ({"stem_stride": 4}, True)}


def say(message):
    print(message, file=sys.stderr, flush=True)


def load():
    return round(os.getloadavg()[0], 2)


# --- FLOPs ---------------------------------------------------------------------

def forward_flops(model):
    """FLOPs of one image's forward pass: 2 per multiply-add of Conv2D, SeparableConv2D and Dense layers."""
    import keras

    total = 0
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.Dense)):
            continue
        cin = layer.input.shape[-1]
        out = layer.output.shape
        pixels = 1
        for dim in out[1:-1]:
            pixels *= dim
        if isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            # depthwise at the output resolution, then the 1x1 pointwise
            total += 2 * kh * kw * cin * pixels + 2 * cin * out[-1] * pixels
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            total += 2 * kh * kw * cin * out[-1] * pixels // layer.groups
        else:
            total += 2 * cin * out[-1] * pixels
    return total


# --- probes: each runs in a fresh process and prints one JSON line ----------------

def _tf(precision="float32", threads=None, model="kibble"):
    """TensorFlow set up as `train` sets it up for `model` (oneDNN or not, its tensors from the pool or malloc)."""
    from train.tf_env import import_tensorflow

    tf = import_tensorflow(model=model)
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    if precision == "bfloat16":
        import keras
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    return tf


def _peak_mb():
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round((peak if sys.platform == "darwin" else peak * 1024) / 1e6, 1)


def _rss_mb():
    import psutil

    return round(psutil.Process().memory_info().rss / 1e6, 1)


def _reset_peak():
    """Reset the kernel's peak RSS of this process (Linux: /proc/self/clear_refs, 5); whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _status_mb(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    return None


def _timed(fn, steps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def probe_ref(precision, steps):
    """GFLOP/s of a plain 3x3 convolution, 64 -> 64 channels on 32x94x125, forward, in `precision`."""
    tf = _tf()
    dtype = tf.bfloat16 if precision == "bfloat16" else tf.float32
    x = tf.cast(tf.random.normal((BATCH, SHAPE[0], SHAPE[1], REF_CHANNELS)), dtype)
    w = tf.cast(tf.random.normal((3, 3, REF_CHANNELS, REF_CHANNELS)) * 0.05, dtype)
    conv = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME")))
    ms = _timed(lambda: conv().numpy(), steps, 3)
    flops = 2 * 9 * REF_CHANNELS * REF_CHANNELS * SHAPE[0] * SHAPE[1] * BATCH
    return {"ms": round(ms, 1), "gflops": round(flops / ms / 1e6, 1)}


def _keras_augment(keras, x, seed, augment="standard"):
    """The default model's augmentation before 2026-11-28: Keras's own four layers, three resamplings."""
    L = keras.layers
    x = L.RandomFlip("horizontal", seed=seed)(x)
    x = L.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed)(x)
    x = L.RandomZoom((-0.15, 0.15), fill_mode="reflect", seed=seed)(x)
    return L.RandomRotation(0.04, fill_mode="reflect", seed=seed)(x)


def _kibble_variant(keras, variant, upscale, seed=0):
    """The default model built otherwise (ARCH_VARIANTS: other arguments, separable convs made dense), without
    its augmentation layers (`no-augment`), or without enlarging its input (`upscale-1`); `upscale`: the
    recipe's factor, which every other variant keeps."""
    from train import models

    if variant == "upscale-1":
        return models.build_model("kibble", SHAPE, seed=seed)
    if variant in ("no-augment", "augment-in-data", "keras-augment"):
        original = models._augment
        models._augment = _keras_augment if variant == "keras-augment" else (lambda keras_, x, *rest: x)
        try:
            return models.build_model("kibble", SHAPE, seed=seed, upscale=upscale)
        finally:
            models._augment = original
    knobs, dense = ARCH_VARIANTS[variant]
    if not dense:
        return models._kibble(keras, SHAPE, 2, seed, upscale=upscale, **knobs)
    separable = keras.layers.SeparableConv2D
    keras.layers.SeparableConv2D = lambda filters, size, **kw: keras.layers.Conv2D(filters, size, **kw)
    try:
        return models._kibble(keras, SHAPE, 2, seed, upscale=upscale, **knobs)
    finally:
        keras.layers.SeparableConv2D = separable


def _build(name, variant, augment="standard"):
    import keras

    from train.fused import as_train_runs_it
    from train.models import build_model
    from train.run import TrainSettings, _compile

    settings = TrainSettings(model=name, batch_size=BATCH).resolved()
    if variant in ("base", "jit", "threads-2-1", *BATCH_VARIANTS) or name != "kibble":
        model = build_model(name, SHAPE, augment=augment, upscale=settings.upscale)
    else:
        model = _kibble_variant(keras, variant, settings.upscale)
    batch = BATCH_VARIANTS.get(variant, BATCH)
    if batch != BATCH:  # the linear scaling rule: the rate in proportion to the batch
        settings = TrainSettings(model=name, batch_size=batch, lr=settings.lr * batch / BATCH).resolved()
    _compile(model, settings, steps_per_epoch=10000 // batch)
    as_train_runs_it(model, name)  # the step train takes (KIBBLE_PROCESS turns each swap off)
    if variant == "jit":
        # Keras turns XLA off again (with a warning) when a layer does not support it, so this variant is the
        # base model unless model.jit_compile.
        model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=True)
    return model, batch


def _augment_fn(tf, seed=0):
    """The default model's augmentation layers as a tf.data map (the same layers, outside the model)."""
    import keras

    from train.models import _augment

    inputs = keras.Input(shape=SHAPE, dtype="float32")
    augment = keras.Model(inputs, _augment(keras, inputs, seed))

    def fn(images, labels):
        return tf.cast(augment(tf.cast(images, tf.float32), training=True), tf.uint8), labels
    return fn


def probe_step(name, precision, variant, steps, warmup, augment="standard"):
    import numpy as np

    threads = (2, 1) if variant == "threads-2-1" else None
    tf = _tf(precision, threads, name)
    row = {"model": name, "precision": precision, "variant": variant, "augment": augment, "load": load(),
           "rss_import_mb": _rss_mb()}
    model, batch = _build(name, variant, augment)
    row["flops_per_image"] = forward_flops(model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 2, (batch, 1)).astype(np.float32)
    if variant == "augment-in-data":
        # A stream of batches augmented by tf.data's parallel map, prefetched, as make_dataset would feed them.
        data = tf.data.Dataset.from_tensors((images, labels)).repeat()
        data = data.map(_augment_fn(tf), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
        iterator = iter(data)
        model.train_on_batch(*next(iterator))

        def step():
            model.train_on_batch(*next(iterator))
    else:
        def step():
            model.train_on_batch(images, labels)
    row["ms_step"] = round(_timed(step, steps, warmup), 1)
    row["xla"] = bool(model.jit_compile)
    row["ms_per_image"] = round(row["ms_step"] / batch, 2)
    row["gflops"] = round(3 * row["flops_per_image"] * batch / row["ms_step"] / 1e6, 1)
    row["peak_mb"] = _peak_mb()
    return row


def probe_layers(steps):
    """Forward + backward time of each layer of the default model alone, and the optimizer's update."""
    import keras
    import numpy as np

    tf = _tf()
    from train.models import build_model
    from train.fused import as_train_runs_it
    from train.run import TrainSettings, _compile

    settings = TrainSettings().resolved()  # the default model's recipe, its upscale included
    model = build_model("kibble", SHAPE, upscale=settings.upscale)
    _compile(model, settings, steps_per_epoch=312)
    as_train_runs_it(model, "kibble")  # the update and batch norms timed below are the ones train runs
    rows = []
    for layer in model.layers[1:]:
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        xs = [tf.constant(np.random.default_rng(0).random((BATCH, *t.shape[1:])).astype(np.float32) * 255)
              for t in inputs]
        weights = layer.trainable_variables
        augment = "random" in layer.name

        @tf.function
        def run(xs=xs, layer=layer, weights=weights, augment=augment):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                y = layer(xs if len(xs) > 1 else xs[0], training=True)
                total = tf.reduce_sum(tf.cast(y, tf.float32))
            if augment:  # no weights, and the step never asks for the gradient of the image
                return total
            return tape.gradient(total, [*xs, *weights])

        ms = _timed(lambda run=run: run(), steps, 2)
        rows.append({"layer": layer.name, "kind": type(layer).__name__, "ms": round(ms, 2)})
    grads = [tf.zeros_like(v) for v in model.trainable_variables]
    update = tf.function(lambda: model.optimizer.apply_gradients(zip(grads, model.trainable_variables)))
    rows.append({"layer": "optimizer", "kind": type(model.optimizer).__name__,
                 "ms": round(_timed(update, steps, 2), 2)})
    images = np.random.default_rng(0).integers(0, 256, (BATCH, *SHAPE), dtype=np.uint8)
    labels = np.ones((BATCH, 1), np.float32)
    whole = _timed(lambda: model.train_on_batch(images, labels), steps, 3)
    return {"load": load(), "layers": rows, "ms_step": round(whole, 1), "keras": keras.__version__}


def probe_memory(shards, prefetch, steps):
    """RSS of this process by steps of the default model's training, fed by train's pipeline from `shards`."""
    row = {"prefetch": prefetch, "load": load(), "rss_start_mb": _rss_mb()}
    _tf()
    row["rss_import_mb"] = _rss_mb()
    from shards import load_manifest
    from train.models import build_model
    from train.pipeline import make_dataset
    from train.run import TrainSettings, _compile

    manifest = load_manifest(shards)
    settings = TrainSettings().resolved()  # the default model's recipe, its upscale included
    model = build_model("kibble", manifest.image_shape, upscale=settings.upscale)
    _compile(model, settings, steps_per_epoch=312)
    row["rss_build_mb"] = _rss_mb()
    data = iter(make_dataset(manifest, "train", BATCH, None, 0, shuffle=True, prefetch=prefetch).repeat())
    row["rss_dataset_mb"] = _rss_mb()
    images, labels = next(data)
    row["rss_batch_mb"] = _rss_mb()
    model.train_on_batch(images, labels)
    row["rss_step1_mb"] = _rss_mb()
    row["peak_to_step1_mb"] = _peak_mb()
    steady = _reset_peak()
    times = []
    for _ in range(steps - 1):
        start = time.perf_counter()
        model.train_on_batch(*next(data))
        times.append(time.perf_counter() - start)
    row["rss_stepN_mb"] = _rss_mb()
    row["steps"] = steps
    row["ms_step"] = round(statistics.median(times) * 1000, 1)
    # The high-water mark of the later steps alone: the activations a step holds for its backward pass.
    row["peak_steps_2_N_mb"] = _status_mb("VmHWM") if steady else None
    row["peak_mb"] = _peak_mb()
    return row


# --- the train command, measured from outside -------------------------------------

def probe_augments(augments, steps, warmup):
    """Median ms per training step of the default model with each augmentation, steps alternated in one process."""
    import numpy as np

    _tf()
    built = {augment: _build("kibble", "base", augment)[0] for augment in augments}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 2, (BATCH, 1)).astype(np.float32)
    for model in built.values():
        for _ in range(warmup):
            model.train_on_batch(images, labels)
    times = {augment: [] for augment in augments}
    for _ in range(steps):
        for augment, model in built.items():
            start = time.perf_counter()
            model.train_on_batch(images, labels)
            times[augment].append((time.perf_counter() - start) * 1000)
    return {"load": load(), "steps": steps,
            "ms_step": {augment: round(statistics.median(found), 1) for augment, found in times.items()},
            "quartiles": {augment: [round(q, 1) for q in statistics.quantiles(found, n=4)]
                          for augment, found in times.items()}}


def print_augments(result):
    print(f"\nthe default model's training step with each augmentation, {result['steps']} steps each alternated "
          f"in one process (load {result['load']}):")
    print("| augment | ms/step (median) | quartiles |\n|---|---:|---|")
    for augment, ms in result["ms_step"].items():
        print(f"| {augment} | {ms} | {result['quartiles'][augment]} |")


def _status_bytes(pid):
    """(RSS, anonymous, file) bytes of one process from /proc/<pid>/status; psutil's RSS where there is none."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle
                      if line.startswith(("VmRSS:", "RssAnon:", "RssFile:"))}
        return values.get("VmRSS", 0), values.get("RssAnon", 0), values.get("RssFile", 0)
    except OSError:
        import psutil

        return psutil.Process(pid).memory_info().rss, 0, 0


def train_memory(shards, model, lever, train_size, val_size, scratch, augment="standard"):
    """Run `train` for one epoch under `lever`; its tree's peak RSS (and split) and ms per step, as a dict."""
    import csv
    import shutil

    import psutil

    run_dir = os.path.join(scratch, f"{model}-{lever}-{augment}")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = ["nice", "-n", "5", sys.executable, os.path.join(REPO, "cli.py"), "-q", "train", "--data", shards,
           "--model", model, "--train-size", str(train_size), "--val-size", str(val_size), "--epochs", "1",
           "--run-dir", run_dir, "--checkpoint-every", "off", "--no-verify", "--augment", augment,
           "--small-first", "0"]  # one epoch of the recipe's smaller-first run would be all small images
    row = {"model": model, "lever": lever, "augment": augment, "load": load()}
    proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env({"KIBBLE_PROCESS": LEVERS[lever]}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = (0, 0, 0)
    while proc.poll() is None:
        try:
            tree = [proc.pid] + [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
            sample = [sum(values) for values in zip(*(_status_bytes(pid) for pid in tree))]
            peak = max(peak, tuple(sample))
        except (psutil.NoSuchProcess, ValueError):
            pass
        time.sleep(0.1)
    error = proc.stderr.read().strip().splitlines()
    if proc.returncode:
        say(f"  {model} {lever} failed: {error[-1:]}")
        return None
    with open(os.path.join(run_dir, "history.csv")) as handle:
        epoch = next(csv.DictReader(handle))
    steps = -(-train_size // BATCH)
    return {**row, "peak_mb": round(peak[0] / 1e6), "anon_mb": round(peak[1] / 1e6), "file_mb": round(peak[2] / 1e6),
            "ms_step": round(float(epoch["seconds"]) * 1000 / steps), "loss": float(epoch["loss"]),
            "val_loss": float(epoch["val_loss"])}


def run_train_memory(shards, models, levers, train_size, val_size, augments=("standard",)):
    import tempfile
    import threading

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-model-") as scratch:
        for model in models:
            runs = [(lever, augment) for lever in levers for augment in (augments if model == "kibble" else
                                                                         ("standard",))]
            say(f"train --model {model}, {train_size} images, side by side: "
                f"{', '.join(f'{lever}/{augment}' for lever, augment in runs)} ...")
            results = [None] * len(runs)

            def measure(i, lever, augment, model=model, results=results):
                results[i] = train_memory(shards, model, lever, train_size, val_size, scratch, augment)

            threads = [threading.Thread(target=measure, args=(i, *run)) for i, run in enumerate(runs)]
            [thread.start() for thread in threads]
            [thread.join() for thread in threads]
            rows += [row for row in results if row]
    return rows


def print_train_memory(rows, train_size, val_size):
    print(f"\n`train` for 1 epoch ({train_size} train, {val_size} validation images, batch {BATCH}), the whole "
          "process tree sampled from outside; levers of one model ran side by side:")
    print("| model | lever | augment | peak MB | of it anonymous | of it file pages | ms/step | loss | load |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['lever']} | {r['augment']} | {r['peak_mb']:,} | {r['anon_mb']:,} | "
              f"{r['file_mb']:,} | {r['ms_step']:,} | {r['loss']:.6f} | {r['load']} |")


# --- the driver ------------------------------------------------------------------

def _child_env(extra=None):
    """This environment for a child process, which decides about oneDNN and the tensor pool itself as `train` does
    (a set-up in this process would have exported its own switches)."""
    env = {key: value for key, value in os.environ.items() if key not in (ONEDNN_ENV, TENSOR_POOL_ENV)}
    return {**env, **(extra or {})}


def _probe(args, env=None):
    """Run this file as a probe in a fresh process (niced); its JSON line as a dict, or None if it failed."""
    cmd = ["nice", "-n", "5", sys.executable, os.path.abspath(__file__), "--probe", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(env))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        say(f"  probe {' '.join(map(str, args))} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(lines[-1])


def precisions():
    from train.precision import read_cpuinfo, supports_bfloat16

    return ("float32", "bfloat16") if supports_bfloat16(read_cpuinfo() or "") else ("float32",)


def run_models(models, steps, warmup, variants, augments=("standard",)):
    ref = {}
    for precision in precisions():
        say(f"reference convolution ({precision}) ...")
        ref[precision] = [_probe(["ref", precision, steps])]
    rows = []
    # Several augmentations: the default model's rows alternate, each twice (A B A B), to share the load.
    rounds = 2 if len(augments) > 1 else 1
    configs = [(m, p, "base", a) for m in models for p in precisions()
               for a in (augments * rounds if m == "kibble" else ("standard",))]
    configs += [("kibble", p, v, "standard") for v in variants for p in precisions()]
    for name, precision, variant, augment in configs:
        say(f"{name} {precision} {variant} {augment} ...")
        row = _probe(["step", name, precision, variant, steps, warmup, augment])
        if row:
            rows.append(row)
    for precision in ref:
        say(f"reference convolution ({precision}) again ...")
        ref[precision].append(_probe(["ref", precision, steps]))
    ref_gflops = {p: statistics.mean(r["gflops"] for r in runs if r) for p, runs in ref.items()}
    for row in rows:
        row["mfu"] = round(row["gflops"] / ref_gflops[row["precision"]], 3)
    return ref, rows


def print_models(ref, rows):
    print(f"machine: {os.cpu_count()} cores; reference 3x3 conv {REF_CHANNELS}->{REF_CHANNELS} on "
          f"{BATCH}x{SHAPE[0]}x{SHAPE[1]} (forward):")
    for precision, runs in ref.items():
        print(f"  {precision}: " + ", ".join(f"{r['gflops']} GFLOP/s ({r['ms']} ms)" for r in runs if r))
    print("\n| model | precision | variant | augment | ms/step | ms/image | MFLOP/image (fwd) | "
          "GFLOP/s (3x fwd) | MFU | peak MB | load |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        variant = r["variant"] + (" (XLA off: Keras refused it)" if r["variant"] == "jit" and not r["xla"] else "")
        print(f"| {r['model']} | {r['precision']} | {variant} | {r['augment']} | {r['ms_step']} | "
              f"{r['ms_per_image']} | {r['flops_per_image'] / 1e6:.0f} | {r['gflops']} | {r['mfu']:.2f} | "
              f"{r['peak_mb']:.0f} | {r['load']} |")


def print_layers(result):
    groups = {}
    for row in result["layers"]:
        kind = "augmentation" if "Random" in row["kind"] or row["kind"] == "Augment" else row["kind"]
        groups[kind] = groups.get(kind, 0) + row["ms"]
    total = sum(groups.values())
    print(f"\nwhere the default model's step goes (each layer alone, forward + backward, batch {BATCH}; "
          f"load {result['load']}); whole train step {result['ms_step']} ms, sum of parts {total:.0f} ms")
    print("| kind | ms | share of the parts |\n|---|---:|---:|")
    for kind, ms in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {ms:.1f} | {ms / total:.0%} |")
    print("\n| layer | kind | ms |\n|---|---|---:|")
    for row in result["layers"]:
        print(f"| {row['layer']} | {row['kind']} | {row['ms']} |")


def print_memory(rows):
    print("\nRSS of a fresh process training the default model from shards (MB):")
    keys = [k for k in rows[0] if k.startswith(("rss_", "peak_"))] + ["ms_step"]
    print(f"(rss_stepN: after {rows[0]['steps']} steps; peak_to_step1: the process's peak through step 1; "
          "peak_steps_2_N: the peak of the later steps alone; peak_mb: the whole probe's; "
          "ms_step: median of steps 2..N)")
    print("| prefetch | environment | " + " | ".join(keys) + " | load |")
    print("|---:|---|" + "---:|" * (len(keys) + 1))
    for r in rows:
        print(f"| {r['prefetch']} | {r['env']} | " + " | ".join(str(r.get(k)) for k in keys) + f" | {r['load']} |")


def probe_main(argv):
    kind = argv[0]
    if kind == "ref":
        result = probe_ref(argv[1], int(argv[2]))
    elif kind == "step":
        result = probe_step(argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]), *argv[6:7])
    elif kind == "augments":
        result = probe_augments(argv[1].split(","), int(argv[2]), int(argv[3]))
    elif kind == "layers":
        result = probe_layers(int(argv[1]))
    else:
        result = probe_memory(argv[1], int(argv[2]), int(argv[3]))
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps after 1 warm-up, conv1 and kibble")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (median)")
    parser.add_argument("--models", help="comma-separated models (default: all; with --quick: conv1,kibble)")
    parser.add_argument("--variants", nargs="?", const=",".join(VARIANTS[1:]), metavar="NAME,...",
                        help=f"also time the default model's cheap variants (all, or these: {', '.join(VARIANTS[1:])})")
    parser.add_argument("--layers", action="store_true", help="also time each layer of the default model")
    parser.add_argument("--memory", metavar="SHARDS", help="also measure RSS by steps, fed from these shards")
    parser.add_argument("--train-memory", metavar="SHARDS",
                        help="also run `train` per model and lever side by side, peak RSS of its process tree")
    parser.add_argument("--levers", default="default,before",
                        help=f"levers for --train-memory, comma-separated from: {', '.join(LEVERS)}")
    parser.add_argument("--train-size", type=int, default=4800, help="train images for --train-memory (150 steps)")
    parser.add_argument("--val-size", type=int, default=640, help="validation images for --train-memory")
    parser.add_argument("--only", choices=("models", "extras"), help="skip the model table, or the extras")
    parser.add_argument("--augment", default="standard",
                        help="the default model's training augmentations, comma-separated from: standard, photo "
                             "(several: their step rows alternate, each twice)")
    args = parser.parse_args()
    steps, warmup = (3, 1) if args.quick else (args.steps, 3)
    models = tuple(args.models.split(",")) if args.models else ("conv1", "kibble") if args.quick else MODELS
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    from train.models import AUGMENTS

    augments = tuple(args.augment.split(","))
    if set(augments) - set(AUGMENTS) or len(set(augments)) != len(augments):
        parser.error(f"--augment: distinct names from {', '.join(AUGMENTS)}. Received: {args.augment}")
    variants = tuple(args.variants.split(",")) if args.variants else ()
    if set(variants) - set(VARIANTS[1:]):
        parser.error(f"--variants: choose from {', '.join(VARIANTS[1:])}. Received: {args.variants}")
    levers = tuple(args.levers.split(","))
    unknown = set(levers) - set(LEVERS)
    if unknown:
        parser.error(f"--levers: unknown {', '.join(sorted(unknown))}; choose from {', '.join(LEVERS)}")
    if args.only != "extras":
        print_models(*run_models(models, steps, warmup, variants, augments))
        if len(augments) > 1 and "kibble" in models:
            say("augmentations alternated in one process ...")
            result = _probe(["augments", ",".join(augments), max(steps, 10), warmup])
            if result:
                print_augments(result)
    if args.layers and args.only != "models":
        say("per-layer timing ...")
        result = _probe(["layers", steps])
        if result:
            print_layers(result)
    if args.memory and args.only != "models":
        rows = []
        for prefetch, env in MEMORY_CONFIGS:
            say(f"memory by steps, prefetch {prefetch} {env or ''} ...")
            row = _probe(["memory", args.memory, prefetch, max(steps, 6)], env)
            if row:
                rows.append({**row, "env": " ".join(f"{k}={v}" for k, v in env.items()) or "-"})
        if rows:
            print_memory(rows)
    if args.train_memory and args.only != "models":
        rows = run_train_memory(args.train_memory, models, levers, args.train_size, args.val_size, augments)
        if rows:
            print_train_memory(rows, args.train_size, args.val_size)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2:])
    else:
        main()
