"""Fault suite, train: kills in the epoch commit, concurrent writers, full disks, bad pointers.

The crash matrix kills a training at each step of RunDir.commit_epoch
(KIBBLE_CRASH_AT, os._exit: no clean-up runs), resumes it, and compares the
result with an uninterrupted run: optimizer steps, history, files, weights.

Whatever must happen in processes of its own (the kills, a file-size limit,
a second writer and a kill -9) runs in children forked from one "zygote"
subprocess, which imported TensorFlow once (~8 s) and ran none of its
operations; run as a script, this file is that zygote. Each child is a real
process: os._exit, kill -9 and setrlimit act on it alone. The pytest side
only asserts on what the children reported.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from shards.errors import UserError  # noqa: E402
from tests.conftest import make_kaggle_shards  # noqa: E402
from train.rundir import COMMIT_STEPS, CRASH_ENV, CRASH_EXIT  # noqa: E402

EPOCHS, TRAIN_SIZE, VAL_SIZE, BATCH = 2, 48, 16, 4
STEPS = TRAIN_SIZE // BATCH  # 12 optimizer steps per epoch
COMMITTED_FILES = [".lock", "best.keras", "config.json", "history.csv", "last.keras", "logs", "state.json"]

# (step of RunDir.commit_epoch, epoch): one line per crash case.
CRASH_CASES = [
    ("epoch-end", 2),   # epoch trained, nothing written
    ("saved", 2),       # epoch-0002.keras written, not committed
    ("state-temp", 2),  # state.json's temporary file written, not renamed
    ("committed", 2),   # state.json renamed: committed, nothing rolled forward
    ("best", 2),        # best.keras updated, last.keras not yet
    ("last", 2),        # last.keras replaced, history.csv not yet
    ("history", 2),     # every file written
    ("committed", 1),   # the first commit, before any best.keras or last.keras exists
]


# A run checkpointed every 5 batches inside its epochs (12 batches each), killed at a
# step of a mid-epoch commit ("<epoch>b<batches>"), then resumed: (step, commit,
# the batch the resumed epoch restarts at, the epoch it is in).
CHECKPOINT_EVERY = "5batches"
MID_EPOCH_CASES = [
    ("committed", "1b5", 5, 1),   # the first commit of the run is mid-epoch: no last.keras yet
    ("saved", "2b10", 5, 2),      # the model of batch 10 written, not committed: back to batch 5
    ("last", "2b5", 5, 2),        # committed and rolled onto last.keras, history not rewritten
    ("history", "2b10", 10, 2),   # every file of the commit written
]


def _settings(shards):
    from train.run import TrainSettings

    return TrainSettings(data=shards, model="mlp", train_size=TRAIN_SIZE, val_size=VAL_SIZE, epochs=EPOCHS,
                         batch_size=BATCH)


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("train-faults"), cats=40, dogs=40, size=(16, 16),
                              shard_size=16, val=0.2, test=0.1)


@pytest.fixture(scope="module")
def zygote(tiny_shards, tmp_path_factory):
    """(folder, results) of every scenario run in the zygote (see _zygote)."""
    out = str(tmp_path_factory.mktemp("zygote"))
    cases = [f"{step}@{epoch}" for step, epoch in CRASH_CASES]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), tiny_shards, out, *cases],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "results.json")) as f:
        return out, json.load(f)


@pytest.mark.parametrize("step,epoch", CRASH_CASES)
def test_a_kill_at_each_commit_step_resumes_to_the_uninterrupted_result(zygote, step, epoch):
    out, results = zygote
    reference, case = results["reference"], results[f"{step}@{epoch}"]
    assert case["crash_exit"] == CRASH_EXIT, "the run did not reach this crash point"
    assert reference["iterations"] == EPOCHS * STEPS
    assert case["iterations"] == reference["iterations"]
    assert case["history_epochs"] == reference["history_epochs"] == list(range(1, EPOCHS + 1))
    assert case["state_epoch"] == EPOCHS and case["best_epoch"] == reference["best_epoch"]
    assert case["files"] == reference["files"] == COMMITTED_FILES
    for which in ("last", "best"):
        ours = np.load(os.path.join(out, f"{step}@{epoch}-{which}.npy"))
        theirs = np.load(os.path.join(out, f"reference-{which}.npy"))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


@pytest.fixture
def finished_run(zygote, tmp_path):
    """A copy of the reference run: mlp, EPOCHS epochs finished, in tmp_path/runs/done."""
    import shutil

    out, _ = zygote
    runs = tmp_path / "runs"
    shutil.copytree(os.path.join(out, "reference"), runs / "done")
    return str(runs / "done")


def _cli(*args):
    """Run the click command in this process: (exit code, stderr lines)."""
    from click.testing import CliRunner

    from cli import cli

    result = CliRunner().invoke(cli, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        result.exception
    return result.exit_code, result.stderr.strip().splitlines()


@pytest.mark.parametrize("step,commit,restart,epoch", MID_EPOCH_CASES)
def test_a_kill_after_a_mid_epoch_checkpoint_resumes_at_its_batch_reading_only_the_rest(zygote, step, commit,
                                                                                       restart, epoch):
    out, results = zygote
    reference, case = results["reference"], results[f"mid-{step}@{commit}"]
    assert case["crash_exit"] == CRASH_EXIT, "the run did not reach this crash point"
    assert case["state_before"] == {"epoch": epoch - 1, "batches": restart}
    # the optimizer did exactly the uninterrupted run's steps: the restarted epoch's rest, then the others
    assert case["iterations"] == reference["iterations"] == EPOCHS * STEPS
    assert case["history_epochs"] == reference["history_epochs"]
    assert case["resumed_at"] == [restart if e == epoch else 0 for e in range(1, EPOCHS + 1)]
    # the resumed process read each remaining train image once and none of the batches done
    assert case["train_images_read"] == (STEPS - restart) * BATCH + (EPOCHS - epoch) * TRAIN_SIZE
    assert case["files"] == COMMITTED_FILES
    # same data order, same optimizer state: the uninterrupted run's weights
    ours = np.load(os.path.join(out, f"mid-{step}@{commit}-last.npy"))
    np.testing.assert_allclose(ours, np.load(os.path.join(out, "reference-last.npy")), rtol=0, atol=1e-6)


def test_the_crash_matrix_covers_every_step_of_the_commit():
    assert {step for step, _ in CRASH_CASES} == set(COMMIT_STEPS)


# -- item 12: stale temporary files are cleaned at the next start, nothing else ------------

PLANTED = [
    (".tmp-4242-last.keras", False),     # kibble's temporary model name before the epoch commit
    (".state.json.tmp-4242", False),     # a killed atomic write
    (".best.keras.tmp-77", False),
    ("epoch-0009.keras", False),         # an epoch never committed
    ("tmpk3_x9q2a", False),              # Keras's weights file of a save that was killed
    ("tmp_notes.txt", True),
    ("notes.txt", True),                 # the user's own file
    ("epoch-9.keras.bak", True),
]


def test_next_start_removes_our_stale_files_and_keeps_the_users(finished_run):
    for name, _ in PLANTED:
        with open(os.path.join(finished_run, name), "wb") as f:
            f.write(b"x" * 1000)
    code, lines = _cli("train", "--resume", "--run-dir", finished_run)
    assert code == 0 and lines == [f"{finished_run} already finished its {EPOCHS} epochs; nothing to do."]
    kept = sorted(COMMITTED_FILES + [name for name, keep in PLANTED if keep])
    assert sorted(os.listdir(finished_run)) == kept


# -- item 12: a full disk or a file-size limit: one line naming the path, nothing half-written


def test_file_size_limit_is_one_line_naming_the_file_and_leaves_no_partial_model(zygote):
    out, results = zygote
    run_dir, result = os.path.join(out, "file-size-limit"), results["file-size-limit"]
    assert result["exit"] == 2
    assert result["stderr"].strip().splitlines() == [
        f"Error: cannot write {os.path.join(run_dir, 'epoch-0001.keras')}: File too large"]
    assert result["files"] == [".lock", "config.json", "logs"]


# -- item 3: one writer per run directory; a killed writer's lock is stale ------------------


def test_a_second_train_into_a_run_directory_is_refused_until_the_first_is_killed(zygote):
    out, results = zygote
    run_dir, result = os.path.join(out, "second-writer"), results["second-writer"]
    assert result["second_exit"] == 2
    assert result["second_stderr"].strip().splitlines() == [
        f"Error: run directory {run_dir} is being written by another kibble process (pid {result['first_pid']}); "
        "wait for it to finish, or use another folder"]
    done = result["done_when_killed"]
    assert done >= 1 and result["resumed_exit"] == 0
    assert result["history_epochs"] == list(range(1, done + 2))
    assert result["iterations"] == (done + 1) * STEPS


def test_runs_started_in_the_same_microsecond_get_their_own_directories(tiny_shards, tmp_path, monkeypatch):
    import train.rundir as rundir
    from train.run import train
    from train.rundir import RunDir

    monkeypatch.setattr(rundir, "_clock", lambda: 1_700_000_000.25)
    runs = str(tmp_path / "runs")
    base = _settings(tiny_shards)
    first = train(base.__class__(**{**base.__dict__, "epochs": 1, "lr": 1e-3}), runs_root=runs, progress=False)
    second = train(base.__class__(**{**base.__dict__, "epochs": 1, "lr": 1e-4}), runs_root=runs, progress=False)
    assert first["run_dir"] != second["run_dir"]
    assert [RunDir(r["run_dir"]).config()["lr"] for r in (first, second)] == [1e-3, 1e-4]
    assert [[row["epoch"] for row in RunDir(r["run_dir"]).history()] for r in (first, second)] == [[1], [1]]


# -- item 1: the newest-run pointer and state.json cannot reach outside ----------------------

OUTSIDE = [  # (file to edit, value naming something outside the folder)
    ("LATEST", "../victim"),
    ("LATEST", "{victim}"),
    ("LATEST", "escape"),  # a symbolic link in runs/ to a folder elsewhere
    ("state.json", "../victim.keras"),
    ("state.json", "{victim}.keras"),
    ("state.json", "config.json"),  # inside, but not a file train writes as an epoch's model
]


@pytest.mark.parametrize("edited,value", OUTSIDE)
def test_a_pointer_outside_the_folder_is_refused_and_nothing_is_touched(finished_run, edited, value):
    runs = os.path.dirname(finished_run)
    victim = os.path.join(os.path.dirname(runs), "victim")
    os.makedirs(victim)
    for name in ("victim.keras", os.path.join("victim", "config.json"), os.path.join("victim", "last.keras")):
        with open(os.path.join(os.path.dirname(runs), name), "w") as f:
            f.write("precious")
    os.symlink(victim, os.path.join(runs, "escape"))
    value = value.format(victim=victim)
    if edited == "LATEST":
        with open(os.path.join(runs, "LATEST"), "w") as f:
            f.write(value + "\n")
        code, lines = _cli("train", "--resume", "--runs", runs)
    else:
        state = json.load(open(os.path.join(finished_run, "state.json")))
        os.remove(os.path.join(finished_run, "last.keras"))  # so a roll forward would be attempted
        with open(os.path.join(finished_run, "state.json"), "w") as f:
            json.dump({**state, "checkpoint": value}, f)
        code, lines = _cli("train", "--resume", "--run-dir", finished_run)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: ")
    assert ("points outside" in lines[0]) or ("train never writes" in lines[0])
    for name in ("victim.keras", os.path.join("victim", "config.json"), os.path.join("victim", "last.keras")):
        assert open(os.path.join(os.path.dirname(runs), name)).read() == "precious"
    assert os.path.exists(os.path.join(finished_run, "config.json"))


# -- item 16: extend a finished run; refuse settings a resume cannot change -------------------


def test_resume_with_more_epochs_extends_a_finished_run(finished_run):
    import keras

    from train.run import TrainSettings, train
    from train.rundir import RunDir

    result = train(TrainSettings(epochs=EPOCHS + 1), run_dir=finished_run, resume=True, progress=False)
    run = RunDir(finished_run)
    assert result["epochs"] == EPOCHS + 1 and not result["already_done"]
    assert [row["epoch"] for row in run.history()] == list(range(1, EPOCHS + 2))
    assert int(keras.models.load_model(run.checkpoint("last")).optimizer.iterations.numpy()) == (EPOCHS + 1) * STEPS
    config = run.config()
    assert config["epochs"] == EPOCHS + 1 and config["extended_from"] == [EPOCHS]


REFUSED_ON_RESUME = [  # (options given with --resume, text the one-line error must hold)
    (["--lr", "0.01"], "--lr 0.01 (the run has 1e-05)"),
    (["--model", "conv1"], "--model conv1 (the run has mlp)"),
    (["--batch-size", "8"], "--batch-size 8 (the run has 4)"),
    (["--seed", "3"], "--seed 3 (the run has 0)"),
    (["--train-size", "40"], "--train-size 40 (the run has 48)"),
    # --full takes what a smaller split holds: all 16 val images, the run's own; its train split holds more than 48
    (["--full"], "--train-size 10000 (the run has 48). Drop"),
    (["--loss", "bce"], "--loss bce (the run has mse)"),
    (["--data", "elsewhere"], "--data elsewhere (the run has "),
    (["--epochs", "1"], f"--epochs 1 is fewer than the {EPOCHS} epochs"),
]


@pytest.mark.parametrize("options,message", REFUSED_ON_RESUME)
def test_resume_refuses_settings_it_cannot_change_naming_them(finished_run, options, message):
    before = open(os.path.join(finished_run, "config.json")).read()
    code, lines = _cli("train", "--resume", "--run-dir", finished_run, *options)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert open(os.path.join(finished_run, "config.json")).read() == before


def test_resume_accepts_settings_given_with_the_runs_own_values(finished_run, tiny_shards):
    code, lines = _cli("train", "--resume", "--run-dir", finished_run, "--model", "mlp", "--batch-size", "4",
                       "--lr", "1e-5", "--data", tiny_shards, "--epochs", str(EPOCHS))
    assert code == 0 and lines == [f"{finished_run} already finished its {EPOCHS} epochs; nothing to do."]


# -- item 11: numeric options that cannot be used are refused as options -------------------

BAD_OPTIONS = [
    (["--seed", "-1"], "Invalid value for '--seed'"),
    (["--seed", str(2**32)], "Invalid value for '--seed'"),
    (["--lr", "nan"], "Invalid value for '--lr'"),
    (["--lr", "inf"], "Invalid value for '--lr'"),
    (["--lr", "1"], "Invalid value for '--lr'"),
    (["--epochs", "0"], "Invalid value for '--epochs'"),
]


@pytest.mark.parametrize("options,message", BAD_OPTIONS)
def test_bad_numbers_are_option_errors(options, message, tmp_path):
    code, lines = _cli("train", "--runs", str(tmp_path / "runs"), *options)
    assert code == 2 and lines[-1].startswith("Error: ") and message in lines[-1]
    assert not (tmp_path / "runs").exists()


def test_library_settings_refuse_a_negative_seed_and_a_nan_rate():
    from train.run import TrainSettings

    with pytest.raises(UserError, match="seed must be a whole number from 0"):
        TrainSettings(seed=-1).validate()
    with pytest.raises(UserError, match="lr must be between 0 and 1. Received: lr=nan"):
        TrainSettings(lr=float("nan")).validate()


# -- item 17: after train --no-verify meets a deleted shard, its hint works ------------------


def test_the_hint_after_a_vanished_shard_is_true(tiny_shards, tmp_path):
    import shutil

    from train.run import train
    from train.rundir import RunDir

    data = str(tmp_path / "shards")
    shutil.copytree(tiny_shards, data)
    victim = os.path.join(data, "train-00000.h5")
    os.rename(victim, victim + ".away")
    settings = _settings(data)
    run_dir = str(tmp_path / "run")
    with pytest.raises(UserError, match=r"train-00000.h5.*`train --resume --run-dir .*run` starts it again"):
        train(settings, run_dir=run_dir, verify=False, progress=False)
    os.rename(victim + ".away", victim)  # "after fixing it"
    result = train(settings.__class__(), run_dir=run_dir, resume=True, progress=False)
    assert result["epochs"] == EPOCHS
    assert [row["epoch"] for row in RunDir(run_dir).history()] == list(range(1, EPOCHS + 1))


# -- the zygote: run as a script by the zygote fixture --------------------------------------


def _fork(function):
    """Run `function` in a forked child that ends with os._exit; return the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            function()
        except SystemExit as exc:  # the command line's exit code
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - report anything, then die like a process
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _wait(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _in_child(function):
    """Run `function` in a forked child; return its exit code."""
    return _wait(_fork(function))


def _run_all(jobs, parallel=2):
    """Run the jobs (functions) in forked children, `parallel` at a time; True if all exited 0."""
    running, ok = set(), True
    for job in jobs:
        while len(running) >= parallel:
            pid, status = os.waitpid(-1, 0)
            running.discard(pid)
            ok &= os.waitstatus_to_exitcode(status) == 0
        running.add(_fork(job))
    for pid in running:
        ok &= _wait(pid) == 0
    return ok


def _cli_in_child(args, stderr_path):
    """The command line, as `python cli.py ARGS` would run it, with stderr to a file."""
    from cli import cli

    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    cli(args, prog_name="python cli.py")


def _cli_options(shards, run_dir, epochs):
    return ["-q", "train", "--data", shards, "--model", "mlp", "--train-size", str(TRAIN_SIZE), "--val-size",
            str(VAL_SIZE), "--batch-size", str(BATCH), "--epochs", str(epochs), "--run-dir", run_dir]


def _report(run_dir, out, name):
    """What the comparison needs from a finished run, as JSON plus the weights as .npy."""
    import keras

    from train.rundir import RunDir

    run = RunDir(run_dir)
    last = keras.models.load_model(run.checkpoint("last"))
    best = keras.models.load_model(run.checkpoint("best"))
    for which, model in (("last", last), ("best", best)):
        np.save(os.path.join(out, f"{name}-{which}.npy"),
                np.concatenate([np.ravel(w) for w in model.get_weights()]))
    state = run.state()
    return {"iterations": int(last.optimizer.iterations.numpy()),
            "history_epochs": [row["epoch"] for row in run.history()],
            "state_epoch": state["epoch"], "best_epoch": state["best_epoch"],
            "files": sorted(os.listdir(run_dir))}


def _reference(shards, out):
    from train.run import train

    run_dir = os.path.join(out, "reference")
    train(_settings(shards), run_dir=run_dir, progress=False)
    _write(out, "reference", _report(run_dir, out, "reference"))


def _crash_and_resume(shards, out, case):
    from train.run import train

    run_dir = os.path.join(out, case)

    def crash():
        os.environ[CRASH_ENV] = case
        train(_settings(shards), run_dir=run_dir, progress=False)

    def resume():
        train(_settings(shards), run_dir=run_dir, resume=True, progress=False)
        _write(out, case, {"crash_exit": crash_exit, **_report(run_dir, out, case)})

    crash_exit = _in_child(crash)
    assert _in_child(resume) == 0, f"resuming {case} failed"


def _crash_mid_epoch_and_resume(shards, out, case):
    from shards.stream import READ_LOG_ENV
    from train.run import train
    from train.rundir import RunDir

    name = f"mid-{case}"
    run_dir, log = os.path.join(out, name), os.path.join(out, f"{name}.reads")

    def crash():
        os.environ[CRASH_ENV] = case
        train(_settings(shards), run_dir=run_dir, progress=False, checkpoint_every=CHECKPOINT_EVERY)

    def resume():
        os.environ[READ_LOG_ENV] = log
        train(_settings(shards), run_dir=run_dir, resume=True, progress=False, checkpoint_every=CHECKPOINT_EVERY)
        with open(log) as f:
            read = sum(int(stop) - int(start) for path, start, stop in (line.rsplit(" ", 2) for line in f)
                       if os.path.basename(path).startswith("train-"))
        _write(out, name, {"crash_exit": crash_exit, "state_before": before, "train_images_read": read,
                           "resumed_at": [row.get("resumed_at_batch") for row in RunDir(run_dir).history()],
                           **_report(run_dir, out, name)})

    crash_exit = _in_child(crash)
    state = RunDir(run_dir).state()
    before = {"epoch": state["epoch"], "batches": state.get("batches", 0)}
    assert _in_child(resume) == 0, f"resuming {name} failed"


def _file_size_limit(shards, out):
    """`train` with every file limited to 100 kB: EFBIG where SIGXFSZ would have killed it."""
    import resource

    run_dir, stderr = os.path.join(out, "file-size-limit"), os.path.join(out, "file-size-limit.stderr")

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        _cli_in_child(_cli_options(shards, run_dir, 2), stderr)

    code = _in_child(limited)
    _write(out, "file-size-limit", {"exit": code, "stderr": open(stderr).read(),
                                    "files": sorted(os.listdir(run_dir))})


def _second_writer(shards, out):
    """A train into a run directory another train is writing; then kill -9 the first and resume."""
    from train.run import TrainSettings, train
    from train.rundir import RunDir

    run_dir, name = os.path.join(out, "second-writer"), "second-writer"
    first = _fork(lambda: _cli_in_child(_cli_options(shards, run_dir, 500), os.path.join(out, f"{name}-1.stderr")))
    state = os.path.join(run_dir, "state.json")
    deadline = time.monotonic() + 300
    while not os.path.exists(state) and time.monotonic() < deadline and os.waitpid(first, os.WNOHANG) == (0, 0):
        time.sleep(0.02)
    second_stderr = os.path.join(out, f"{name}-2.stderr")
    second_exit = _in_child(lambda: _cli_in_child(_cli_options(shards, run_dir, 500), second_stderr))
    os.kill(first, signal.SIGKILL)
    _wait(first)
    done = RunDir(run_dir).state()["epoch"]

    def resume():
        train(TrainSettings(epochs=done + 1), run_dir=run_dir, resume=True, progress=False)
        report = RunDir(run_dir)
        import keras
        iterations = keras.models.load_model(report.checkpoint("last")).optimizer.iterations
        _write(out, f"{name}-resumed", {"history_epochs": [row["epoch"] for row in report.history()],
                                        "iterations": int(iterations.numpy())})

    resumed_exit = _in_child(resume)
    _write(out, name, {"first_pid": first, "second_exit": second_exit, "second_stderr": open(second_stderr).read(),
                       "done_when_killed": done, "resumed_exit": resumed_exit, **_read(out, f"{name}-resumed")})


def _zygote(shards, out, cases):
    """Run every scenario in forked children, two at a time; write results.json.

    The zygote itself runs no TensorFlow operation, so each fork starts
    from a process whose TensorFlow has only been imported.
    """
    import keras  # noqa: F401 - imported once, before any fork

    started = time.monotonic()
    jobs = [lambda: _reference(shards, out), lambda: _file_size_limit(shards, out),
            lambda: _second_writer(shards, out)]
    jobs += [lambda case=case: _crash_and_resume(shards, out, case) for case in cases]
    mid = [f"{step}@{commit}" for step, commit, _, _ in MID_EPOCH_CASES]
    jobs += [lambda case=case: _crash_mid_epoch_and_resume(shards, out, case) for case in mid]
    assert _run_all(jobs)
    names = ["reference", "file-size-limit", "second-writer", *cases, *[f"mid-{case}" for case in mid]]
    print(f"zygote: {len(jobs)} scenarios in {time.monotonic() - started:.1f} s", file=sys.stderr)
    _write(out, "results", {name: _read(out, name) for name in names})


def _write(out, name, data):
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(data, f)


def _read(out, name):
    with open(os.path.join(out, f"{name}.json")) as f:
        return json.load(f)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _zygote(sys.argv[1], sys.argv[2], sys.argv[3:])
