"""`train --minutes N` killed (os._exit at a mid-epoch commit, as kill -9 would) and resumed:
the resumed run counts the seconds state.json kept and continues the schedule from them."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT, make_kaggle_shards
from train.budget import budget_lr
from train.run import TrainSettings
from train.rundir import CRASH_ENV, CRASH_EXIT, RunDir

# PEAK: the default model's recipe's rate, which the run below trains at.
SCHEDULE_SECONDS, PEAK, STEPS = 60.0, TrainSettings().resolved().lr, 12
# The default model's recipe (its schedule over the budget) on the mlp's few layers, to keep it fast.
SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import train.models as models
from train.run import TrainSettings, train
build = models.build_model
models.build_model = lambda name, *args, **kw: build("mlp", *args, **kw)
train(TrainSettings(data=sys.argv[2], model="kibble", train_size=48, val_size=16, batch_size=4, minutes=1.0,
                    small_first=0.0, average=0.0, upscale=1.0),
      run_dir=sys.argv[3], progress=False, checkpoint_every="4batches")
"""


def test_a_killed_budget_run_resumes_with_the_seconds_it_had_used(tmp_path, monkeypatch):
    import train.models as models
    from train.run import TrainSettings, train

    shards = make_kaggle_shards(tmp_path / "data", cats=40, dogs=40, size=(16, 16), shard_size=16, val=0.2,
                                test=0.1)
    run_dir = str(tmp_path / "run")
    killed = subprocess.run([sys.executable, "-c", SCRIPT, ROOT, shards, run_dir], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, env={**os.environ, CRASH_ENV: "committed@3b4"})
    assert killed.returncode == CRASH_EXIT, "the run did not reach its checkpoint: " + killed.stderr[-2000:]
    with open(os.path.join(run_dir, "state.json")) as f:
        kept = json.load(f)
    assert (kept["epoch"], kept["batches"]) == (2, 4)
    assert 0.0 < kept["validation_seconds"] < kept["seconds"]  # what the resumed clock leaves room for
    before = kept["seconds"] + kept["epoch_seconds"]

    # Resumed here with 3 s more than it had used (the schedule stays set for the 60 s it began with).
    build = models.build_model
    monkeypatch.setattr(models, "build_model", lambda name, *args, **kw: build("mlp", *args, **kw))
    budget = before + 3.0
    result = train(TrainSettings(minutes=budget / 60), run_dir=run_dir, resume=True, progress=False,
                   given={"minutes"}, checkpoint_every="4batches")
    run = RunDir(run_dir)
    state, rows = run.state(), run.history()
    assert result["stopped_at_budget"] and rows[2]["resumed_at_batch"] == 4
    assert rows[2]["seconds"] >= kept["epoch_seconds"]  # the resumed epoch's row keeps the time before the kill
    # Counted from the seconds kept: a clock started again would train `budget` seconds on top of them.
    assert budget - 2.0 <= state["seconds"] < budget + before - 1.0
    used = np.cumsum([row["seconds"] for row in rows])
    np.testing.assert_allclose([row["lr"] for row in rows], [budget_lr(u / SCHEDULE_SECONDS, PEAK) for u in used],
                               atol=2e-5)
    assert all(row["batches"] == STEPS for row in rows[:-1])
