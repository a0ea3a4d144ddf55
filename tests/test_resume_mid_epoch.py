"""Resume inside an epoch (issue 12 item 6): the interval option and the mid-epoch commit.

The kills and resumes of real trainings are in tests/faults/test_train.py
(MID_EPOCH_CASES); the order of a resumed pass is in tests/test_worker_split.py.
"""
import json
import os

import pytest
from click.testing import CliRunner

from cli import cli
from shards.errors import UserError
from train.run import CheckpointEvery, parse_checkpoint_every
from train.rundir import EPOCH_FILE, RunDir

INTERVALS = [  # (given, seconds, batches)
    ("10m", 600.0, None),
    ("90s", 90.0, None),
    ("1.5h", 5400.0, None),
    ("45", 45.0, None),
    ("20min", 1200.0, None),  # the grammar of --minutes (train.budget.duration_seconds), bare numbers in seconds
    (".5m", 30.0, None),
    (" 2 m ", 120.0, None),
    ("500batches", None, 500),
    ("1 batch", None, 1),
    ("off", None, None),
    ("OFF", None, None),
    ("0", None, None),
    ("0m", None, None),
    (30, 30.0, None),
    (0, None, None),
]


@pytest.mark.parametrize("given,seconds,batches", INTERVALS)
def test_checkpoint_intervals_parse(given, seconds, batches):
    every = parse_checkpoint_every(given)
    assert (every.seconds, every.batches) == (seconds, batches)
    assert every.enabled == bool(seconds or batches)


BAD_INTERVALS = ["10 minutes", "-5m", "1.5batches", "m", "", "nan", "1e3s"]


@pytest.mark.parametrize("given", BAD_INTERVALS)
def test_bad_intervals_are_refused_naming_the_value(given):
    with pytest.raises(UserError, match=f"Received: checkpoint_every={given!r}"):
        parse_checkpoint_every(given)


@pytest.mark.parametrize("given", ["10 minutes", "-5m", "1.5batches"])
def test_bad_intervals_are_option_errors(given, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--runs", str(tmp_path / "runs"), "--checkpoint-every", given])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and lines[-1] == (
        "Error: Invalid value for '--checkpoint-every': must be a duration such as 10m, 90s or 1h, a count such "
        f"as 500batches, or off (0). Received: {given!r}")
    assert not (tmp_path / "runs").exists()


class _Model:
    """Stands in for a Keras model: RunDir only calls save(path)."""

    def __init__(self, content):
        self.content = content

    def save(self, path):
        with open(path, "w") as f:
            f.write(self.content)


def _read(path):
    with open(path) as f:
        return f.read()


def test_a_mid_epoch_commit_moves_last_keras_only_and_the_next_epoch_end_clears_it(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    os.makedirs(run.path)
    row = {"epoch": 1, "loss": 0.5, "val_loss": 0.4, "seconds": 1.0, "resumed_at_batch": 0}
    first = {"epoch": 1, "best_epoch": 1, "best_val_loss": 0.4, "seconds": 1.0, "history": [row]}
    with run.lock():
        run.commit_epoch(_Model("epoch 1"), first)
        run.commit_epoch(_Model("epoch 2, batch 7"), {**first, "batches": 7, "epoch_seconds": 0.5})
        assert sorted(os.listdir(run.path)) == [".lock", "best.keras", "history.csv", "last.keras", "state.json"]
        assert _read(run.checkpoint("last")) == "epoch 2, batch 7"
        assert _read(run.checkpoint("best")) == "epoch 1"  # no validation judged the partial model
        assert [r["epoch"] for r in run.history()] == [1]
        state = run.state()
        assert (state["epoch"], state["batches"], state["checkpoint"]) == (1, 7, "epoch-0002-batch-000007.keras")
        assert EPOCH_FILE.match(state["checkpoint"]) and run.recover()["batches"] == 7
        second = {"epoch": 2, "best_epoch": 1, "best_val_loss": 0.4, "seconds": 2.0,
                  "history": [row, {**row, "epoch": 2, "resumed_at_batch": 7}]}
        run.commit_epoch(_Model("epoch 2"), second)
    state = json.loads(_read(run.file("state.json")))
    assert "batches" not in state and state["checkpoint"] == "epoch-0002.keras"
    assert [(r["epoch"], r["resumed_at_batch"]) for r in run.history()] == [(1, 0), (2, 7)]
    assert _read(run.checkpoint("last")) == "epoch 2" and _read(run.checkpoint("best")) == "epoch 1"


def test_disabled_checkpoints_are_never_due():
    assert not CheckpointEvery().enabled and CheckpointEvery(batches=3).enabled
