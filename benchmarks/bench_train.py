"""Training benchmark: our shard pipeline against the usual alternatives.

    python benchmarks/bench_train.py SOURCE [--shards DIR]

SOURCE is a Kaggle-shaped folder at original resolution (SOURCE/train/...,
e.g. the 25,000-image folder built by ../shared/tools/make_kaggle_like.py).
Its shards are made with `cli.py ingest SOURCE --out DIR` first when DIR has
none. One run measures, on the same machine and the same 10,000 training
images (the first 10,000 of the shuffled train split, as `train --full`):

(a) feed rate of one epoch, nothing trained: our `make_dataset`, Keras's
    `image_dataset_from_directory` on the same JPEGs, and NumPy arrays in RAM
    through `from_tensor_slices`;
(b) seconds per epoch of `conv2` fed by our pipeline and by in-RAM arrays;
(c) peak memory of the whole `cli.py train --full --model conv2` process
    against the tutorial's way (every image decoded into float32 arrays first)
    on the same 10,000 + 2,500 images, one epoch each;
(d) peak memory of `train` at --train-size 4096 and 20000 (one epoch each),
    and the process's memory after epoch 1 and after epoch 5.

Each measurement runs in a fresh process. The table goes to stdout. Not a test.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.measure import OtherLoad, TreeSampler, run_measured  # noqa: E402
from shards.image import DEFAULT_SIZE  # noqa: E402

MB = 1e6
PY = sys.executable
CLI = os.path.join(REPO, "cli.py")


def say(message):
    print(message, file=sys.stderr, flush=True)


# Each probe below runs as `python bench_train.py --probe NAME ARGS...` in a
# fresh process and prints one JSON line.

def _train_names(shards, limit):
    from shards import ShardReader, load_manifest

    manifest = load_manifest(shards)
    names = []
    for entry in manifest.shards("train"):
        with ShardReader(manifest.shard_path(entry)) as shard:
            names += list(zip(shard.names, shard.labels.tolist()))
        if len(names) >= limit:
            break
    return manifest, names[:limit]


def _in_ram(shards, limit, split="train"):
    """uint8 images and float32 labels of the first `limit` images of a split."""
    import numpy as np

    from shards import load_manifest
    from shards.stream import plan_blocks, read_blocks

    # All the blocks as one group: read straight into one array, no copy.
    [(images, labels, _)] = read_blocks([plan_blocks(load_manifest(shards), split, limit)])
    return images, labels.astype(np.float32)[:, None]


def probe_feed(kind, shards, source, limit):
    import time

    from train.tf_env import import_tensorflow

    tf = import_tensorflow()
    if kind == "ours":
        from shards import load_manifest
        from train.pipeline import make_dataset

        dataset = make_dataset(load_manifest(shards), "train", 32, limit)
    elif kind == "numpy":
        images, labels = _in_ram(shards, limit)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(labels)).batch(32).prefetch(2)
    else:  # image_dataset_from_directory on the same JPEGs, sorted into class folders
        import keras

        _, names = _train_names(shards, limit)
        folder = tempfile.mkdtemp(prefix="kibble-idfd-")
        for name, label in names:
            target = os.path.join(folder, "cat" if label == 1 else "dog")
            os.makedirs(target, exist_ok=True)
            os.symlink(os.path.join(source, name), os.path.join(target, os.path.basename(name)))
        dataset = keras.utils.image_dataset_from_directory(folder, image_size=DEFAULT_SIZE, batch_size=32,
                                                           label_mode="binary", verbose=False)
        dataset = dataset.prefetch(2)

    def count(ds):
        return int(ds.reduce(tf.constant(0), lambda total, batch: total + tf.shape(batch[1])[0]))

    rates = []
    for _ in range(2):
        started = time.perf_counter()
        n = count(dataset)
        rates.append(n / (time.perf_counter() - started))
    return {"images": n, "first_epoch_rate": rates[0], "second_epoch_rate": rates[1]}


def probe_fit(kind, shards, limit, epochs=2):
    import time

    from train.tf_env import import_tensorflow

    import_tensorflow()
    import keras

    from shards import load_manifest
    from train.models import build_model
    from train.pipeline import make_dataset
    from train.run import TrainSettings, _compile

    manifest = load_manifest(shards)
    keras.utils.set_random_seed(0)
    model = build_model("conv2", manifest.image_shape)
    _compile(model, TrainSettings(model="conv2").resolved(), -(-limit // 32))
    seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    if kind == "ours":
        model.fit(make_dataset(manifest, "train", 32, limit), epochs=epochs, callbacks=[Timer()], verbose=0)
    else:
        images, labels = _in_ram(shards, limit)
        model.fit(images, labels, batch_size=32, epochs=epochs, shuffle=True, callbacks=[Timer()], verbose=0)
    return {"epoch_seconds": seconds}


def probe_tutorial(shards, source, train_size, val_size):
    """The tutorial's way: decode every image with PIL into float32 arrays, then fit."""
    import numpy as np
    from PIL import Image

    from train.tf_env import import_tensorflow

    import_tensorflow()
    from train.models import build_model
    from train.run import TrainSettings, _compile

    _, names = _train_names(shards, train_size)

    def load(pairs):
        images = []
        for name, _ in pairs:
            with Image.open(os.path.join(source, name)) as im:
                images.append(np.asarray(im.convert("RGB").resize((125, 94)), dtype=np.float32))
        return np.array(images), np.array([[label] for _, label in pairs], dtype=np.float32)

    from shards import ShardReader, load_manifest

    manifest = load_manifest(shards)
    val_names = []
    for entry in manifest.shards("val"):
        with ShardReader(manifest.shard_path(entry)) as shard:
            val_names += list(zip(shard.names, shard.labels.tolist()))
    x, y = load(names)
    vx, vy = load(val_names[:val_size])
    model = build_model("conv2", (94, 125, 3))
    # the tutorial scaled in NumPy; our model rescales uint8 itself, so feed 0-255 floats
    _compile(model, TrainSettings(model="conv2").resolved(), -(-len(y) // 32))
    model.fit(x, y, validation_data=(vx, vy), batch_size=32, epochs=1, verbose=0)
    return {"images": len(y) + len(vy)}


PROBES = {"feed": probe_feed, "fit": probe_fit, "tutorial": probe_tutorial}


def run_probe(*args):
    result = run_measured([PY, __file__, "--probe", *map(str, args)])
    payload = json.loads(result["stdout"].strip().splitlines()[-1])
    return {**payload, "seconds": result["seconds"], "peak_tree": result["peak_tree"]}


def run_train(shards, runs, *options):
    """`cli.py train` in a subprocess; (measurement, RSS timeline, history rows)."""
    import csv
    import time

    run_dir = os.path.join(runs, f"run-{len(os.listdir(runs)) if os.path.isdir(runs) else 0}")
    cmd = [PY, CLI, "-q", "train", "--data", shards, "--model", "conv2", "--run-dir", run_dir,
           "--runs", runs, "--no-verify", *map(str, options)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    _, stderr = proc.communicate()
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"train failed ({proc.returncode}): {' '.join(cmd)}\n{stderr}")
    with open(os.path.join(run_dir, "history.csv")) as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return {"seconds": time.perf_counter() - started, "peak_tree": sampler.peak}, sampler.timeline, history


def ensure_shards(source, shards):
    if os.path.exists(os.path.join(shards, "manifest.json")):
        return
    say(f"ingesting {source} into {shards} ...")
    subprocess.run([PY, CLI, "-q", "ingest", source, "--out", shards], cwd=REPO, check=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--probe":
        name, *args = argv[1:]
        casts = {"feed": (str, str, str, int), "fit": (str, str, int), "tutorial": (str, str, int, int)}[name]
        print(json.dumps(PROBES[name](*(cast(a) for cast, a in zip(casts, args)))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="Kaggle-shaped folder at original resolution (holding train/).")
    parser.add_argument("--shards", default=os.path.join(REPO, "data", "bench-shards"),
                        help="Shard folder of SOURCE (made if missing).")
    parser.add_argument("--parts", default="abcd", help="Which measurements to run (letters a-d).")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.source):
        say(f"No folder at {args.source}. Build it with:\n"
            f"    python3 ../shared/tools/make_kaggle_like.py {args.source} --per-class 12500")
        return 2
    ensure_shards(args.source, args.shards)
    source_root = os.path.abspath(args.source)
    runs = tempfile.mkdtemp(prefix="kibble-bench-runs-")
    rows = []

    def row(what, value, unit, other):
        rows.append((what, value, unit, other))
        say(f"  {what}: {value:,.1f} {unit} (other load {other:.2f} cores)")

    try:
        if "a" in args.parts:
            for kind in ("ours", "image_dataset_from_directory", "numpy"):
                say(f"(a) feed, {kind} ...")
                with OtherLoad() as load:
                    result = run_probe("feed", kind, args.shards, source_root, 10000)
                row(f"(a) feed one epoch of 10,000, {kind} (2nd epoch)", result["second_epoch_rate"], "img/s",
                    load.cores)
                row(f"(a) peak RSS, feed {kind}", result["peak_tree"] / MB, "MB", load.cores)
        if "b" in args.parts:
            for kind in ("ours", "numpy"):
                say(f"(b) conv2 fit, {kind} ...")
                with OtherLoad() as load:
                    result = run_probe("fit", kind, args.shards, 10000)
                row(f"(b) conv2 epoch 2 of 10,000, fed by {kind}", result["epoch_seconds"][-1], "s", load.cores)
        if "c" in args.parts:
            say("(c) cli.py train --full --model conv2 --epochs 1 ...")
            with OtherLoad() as load:
                measured, _, _ = run_train(args.shards, runs, "--full", "--epochs", 1)
            row("(c) peak RSS, train --full conv2 1 epoch, ours", measured["peak_tree"] / MB, "MB", load.cores)
            say("(c) the tutorial's in-RAM float32 arrays ...")
            with OtherLoad() as load:
                result = run_probe("tutorial", args.shards, source_root, 10000, 2500)
            row("(c) peak RSS, tutorial in-RAM float32, same split, 1 epoch", result["peak_tree"] / MB, "MB",
                load.cores)
        if "d" in args.parts:
            say("(d) train --train-size 4096, 5 epochs ...")
            with OtherLoad() as load:
                small, timeline, history = run_train(args.shards, runs, "--train-size", 4096, "--val-size",
                                                     1024, "--epochs", 5)
            # history.csv records the process's own RSS at every epoch's end
            row("(d) RSS at end of epoch 1, train-size 4096", history[0]["rss_mb"], "MB", load.cores)
            row("(d) RSS at end of epoch 5, train-size 4096", history[-1]["rss_mb"], "MB", load.cores)
            row("(d) peak RSS, train-size 4096, 5 epochs", small["peak_tree"] / MB, "MB", load.cores)
            say("(d) train --train-size 20000, 1 epoch ...")
            with OtherLoad() as load:
                large, _, _ = run_train(args.shards, runs, "--train-size", 20000, "--val-size", 1024,
                                        "--epochs", 1)
            row("(d) peak RSS, train-size 20000, 1 epoch", large["peak_tree"] / MB, "MB", load.cores)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    print(f"| {'measurement':<62} | {'value':>10} | unit | other load (cores) |")
    print(f"|{'-' * 64}|{'-' * 12}|------|--------------------|")
    for what, value, unit, other in rows:
        print(f"| {what:<62} | {value:>10,.1f} | {unit:<4} | {other:>18.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
