"""clothing-small: kibble against `image_dataset_from_directory` and keras.io's small convnet.

    python benchmarks/bench_clothing.py [DATASET] --minutes 12 [--size 94x125] [--json results.json]

DATASET (default ../shared/datasets/clothing-small) holds train/,
validation/ and test/, one sub-folder per class. One invocation runs, each
step in its own process, measured from outside (wall time, peak memory of
the whole process tree, the load other jobs put on the machine):

1. kibble: `cli.py ingest` (the given splits kept) into a scratch folder;
   `cli.py train --model kibble --minutes B`, which stops when B minutes of
   training and validation are used (process start-up and checkpoint
   writes not counted) and anneals the learning rate over them; `cli.py
   evaluate --split test`.
2. baseline: benchmarks/clothing_baseline.py, trained for the same budget
   (stopping after the epoch that crosses it), best validation accuracy
   kept.

Both sides' test figures come from evaluate.metrics.MulticlassAccumulator.
Prints a Markdown table; --json writes every figure. Not a test.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.measure import OtherLoad, run_measured  # noqa: E402
from shards.image import DEFAULT_SIZE  # noqa: E402

PY = sys.executable
CLI = os.path.join(REPO, "cli.py")
BASELINE = os.path.join(REPO, "benchmarks", "clothing_baseline.py")
DATASET = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets", "clothing-small"))
MB = 1e6


def say(message):
    print(message, file=sys.stderr, flush=True)


def step(name, cmd):
    """Run one measured step; its figures plus the other load on the machine meanwhile."""
    say(f"{name}: {' '.join(cmd)}")
    with OtherLoad() as load:
        result = run_measured(cmd)
    result["other_load_cores"] = round(load.cores, 2)
    say(f"{name}: {result['seconds'] / 60:.1f} min, peak {result['peak_tree'] / MB:,.0f} MB")
    return result


def test_figures(metrics):
    test = metrics["splits"]["test"]
    return {"count": test["count"], "accuracy": test["accuracy"], "top_3_accuracy": test.get("top_3_accuracy"),
            "macro_f1": test["macro"]["f1"]}


def pinned(core):
    """Command prefix that keeps a side on one core (--side-by-side), or none."""
    return [] if core is None else ["taskset", "-c", str(core)]


def run_kibble(args, scratch, core=None):
    shards, main_run = (os.path.join(scratch, name) for name in ("shards", "run"))
    size = ["--size", args.size]
    ingest = step("kibble ingest", [*pinned(core), PY, CLI, "--quiet", "ingest", args.dataset, "--out", shards,
                                    *size, "--workers", "1"])
    train = step("kibble train", [*pinned(core), PY, CLI, "--quiet", "train", "--data", shards, "--model", "kibble",
                                  "--class-weight", args.class_weight, "--seed", str(args.seed),
                                  "--minutes", str(args.minutes), "--run-dir", main_run])
    evaluate = step("kibble evaluate", [*pinned(core), PY, CLI, "--quiet", "evaluate", main_run, "--split", "test"])
    with open(os.path.join(main_run, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(main_run, "state.json")) as f:
        state = json.load(f)
    steps = {"ingest": ingest, "train": train, "evaluate": evaluate}
    last = state["history"][-1] if state.get("history") else {}
    return {
        "test": test_figures(metrics),
        "epochs": state["epoch"], "best_epoch": state.get("best_epoch"),
        # The last epoch is cut short by the budget: the batches it trained.
        "last_epoch_batches": last.get("batches"),
        "train_minutes": round(train["seconds"] / 60, 2),
        "budget_used_minutes": round(state["seconds"] / 60, 2),
        "peak_mb": round(max(s["peak_tree"] for s in steps.values()) / MB),
        "train_peak_mb": round(train["peak_tree"] / MB),
        "steps": {name: {"minutes": round(s["seconds"] / 60, 2), "peak_mb": round(s["peak_tree"] / MB),
                         "other_load_cores": s["other_load_cores"]} for name, s in steps.items()},
    }


def run_baseline(args, core=None):
    result = step("baseline", [*pinned(core), PY, BASELINE, args.dataset, "--minutes", str(args.minutes),
                               "--size", args.size,
                               "--batch-size", str(args.baseline_batch_size), "--seed", str(args.seed)])
    found = json.loads(result["stdout"].strip().splitlines()[-1])
    return {
        "test": found["test"], "epochs": found["epochs"], "best_epoch": found["best_epoch"],
        "train_minutes": round(found["train_minutes"], 2),
        "process_minutes": round(result["seconds"] / 60, 2),
        "peak_mb": round(result["peak_tree"] / MB), "batch_size": found["batch_size"],
        "other_load_cores": result["other_load_cores"],
    }


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.1f}%"


def table(results):
    rows = [("kibble (`ingest` + `train --model kibble` + `evaluate`)", results["kibble"]),
            ("`image_dataset_from_directory` + keras.io convnet", results["baseline"])]
    lines = ["| approach | test accuracy | top-3 | macro-F1 | training minutes | epochs (best) | peak memory |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        t = r["test"]
        lines.append(f"| {name} | {_percent(t['accuracy'])} | {_percent(t['top_3_accuracy'])} | "
                     f"{t['macro_f1']:.3f} | {r['train_minutes']:.1f} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['peak_mb']:,} MB |")
    return lines


def notes(args, results):
    k, b = results["kibble"], results["baseline"]
    loads = [s["other_load_cores"] for s in k["steps"].values()] + [b["other_load_cores"]]
    return [
        f"Budget {args.minutes:g} min of training a side, images {args.size}, seed {args.seed}, "
        f"{os.cpu_count()} cores; test split {k['test']['count']} images.",
        f"kibble: --class-weight {args.class_weight}, --minutes {args.minutes:g}: {k['epochs']} epoch(s), the last "
        f"cut at {k['last_epoch_batches']} batches; {k['budget_used_minutes']} min of training and validation "
        f"counted, the train process {k['train_minutes']} min; best epoch by val loss. Peak memory is the largest "
        f"of its steps (train alone: {k['train_peak_mb']:,} MB).",
        f"baseline: batch {b['batch_size']}, Adam 3e-4, stopped after the epoch crossing the budget; "
        f"best epoch by val accuracy; peak memory of its one process (training and test prediction).",
        f"Other load on the machine (cores busy with other jobs): {', '.join(f'{x:.2f}' for x in loads)}.",
    ]


def run_sides(args, scratch):
    """{"kibble": ..., "baseline": ...}: one after the other, or at once on a core each."""
    if not args.side_by_side:
        return {"kibble": run_kibble(args, scratch), "baseline": run_baseline(args)}
    results, errors = {}, []

    def side(name, run, *extra):
        try:
            results[name] = run(args, *extra)
        except BaseException as exc:  # re-raised below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=side, args=("kibble", run_kibble, scratch, 0)),
               threading.Thread(target=side, args=("baseline", run_baseline, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", nargs="?", default=DATASET)
    parser.add_argument("--minutes", type=float, required=True, help="Training budget of each side.")
    parser.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", help="HEIGHTxWIDTH, both sides.")
    parser.add_argument("--class-weight", choices=("balanced", "none"), default="balanced",
                        help="kibble's --class-weight (balanced: macro-F1 weighs every class alike).")
    parser.add_argument("--baseline-batch-size", type=int, default=128, help="The keras.io example's batch size.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="Write every figure here.")
    parser.add_argument("--side-by-side", action="store_true",
                        help="Run both sides at once, each pinned to one core, so that other load on a shared "
                             "machine falls on both alike (Linux: taskset).")
    parser.add_argument("--scratch", default=None, help="Folder for kibble's shards and runs (default: a temp "
                                                        "folder, removed at the end).")
    args = parser.parse_args()
    if not all(os.path.isdir(os.path.join(args.dataset, split)) for split in ("train", "validation", "test")):
        raise SystemExit(f"{args.dataset} must hold train/, validation/ and test/ folders")
    scratch = args.scratch or tempfile.mkdtemp(prefix="kibble-clothing-")
    started = time.monotonic()
    try:
        results = run_sides(args, scratch)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    results["settings"] = {"dataset": os.path.abspath(args.dataset), "minutes": args.minutes, "size": args.size,
                           "class_weight": args.class_weight, "seed": args.seed, "cores": os.cpu_count(),
                           "side_by_side": args.side_by_side,
                           "total_minutes": round((time.monotonic() - started) / 60, 1)}
    results["notes"] = notes(args, results)
    print("\n".join(table(results)))
    print()
    print("\n".join(f"- {line}" for line in results["notes"]))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
