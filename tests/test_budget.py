"""`train --minutes N` (issue 11): a time budget that stops the run, and the default model's schedule over it.

A kill -9 inside a budgeted run, then its resume, is in tests/test_budget_resume.py.
"""
import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from shards.errors import UserError
from tests.conftest import make_kaggle_shards
from train.budget import FLOOR, WARMUP, BudgetClock, budget_lr, make_schedule, parse_minutes, schedule_of
from train.run import TrainSettings, train
from train.rundir import RunDir
from train.summary import format_summary

MINUTES = [  # (given, minutes)
    ("20", 20.0),
    ("20m", 20.0),
    ("20min", 20.0),
    ("90s", 1.5),
    ("1.5h", 90.0),
    (" 2.5 m ", 2.5),
    (".5", 0.5),
    (45, 45.0),
    (0.05, 0.05),
]


@pytest.mark.parametrize("given,minutes", MINUTES)
def test_budgets_parse_to_minutes(given, minutes):
    assert parse_minutes(given) == pytest.approx(minutes)


BAD_MINUTES = ["0", "0s", "-5", "abc", "10batches", "nan", "inf", "1e3", "", "5 minutes"]


@pytest.mark.parametrize("given", BAD_MINUTES)
def test_bad_budgets_are_one_error_line_exit_2(given, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--runs", str(tmp_path / "runs"), "--minutes", given])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: Invalid value for '--minutes': must be a training time greater than 0, in minutes (20) or with a "
        f"unit (90s, 20m, 1.5h). Received: {given!r}")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("minutes", [0, -1.0, float("nan"), float("inf"), "20", True])
def test_library_settings_refuse_a_bad_budget(minutes):
    with pytest.raises(UserError, match="Received: minutes="):
        TrainSettings(minutes=minutes).validate()


def test_a_budget_leaves_the_epoch_count_open_unless_given():
    assert TrainSettings(model="kibble", minutes=20).resolved().epochs is None
    assert TrainSettings(model="kibble", minutes=20).resolved().epoch_cap > 10_000
    assert TrainSettings(model="kibble", minutes=20, epochs=7).resolved().epochs == 7
    assert TrainSettings(model="kibble").resolved().epochs == 24


def test_the_rate_warms_up_then_falls_along_a_cosine_to_the_floor():
    peak = 2e-3
    assert budget_lr(0.0, peak) == pytest.approx(peak / 10)
    assert budget_lr(WARMUP, peak) == pytest.approx(peak)
    assert budget_lr((1 + WARMUP) / 2, peak) == pytest.approx(peak * (FLOOR + (1 - FLOOR) / 2))
    assert budget_lr(1.0, peak) == budget_lr(3.0, peak) == pytest.approx(FLOOR * peak)
    falling = [budget_lr(f, peak) for f in np.linspace(WARMUP, 1, 50)]
    assert all(a > b for a, b in zip(falling, falling[1:]))


def test_the_clock_stops_early_enough_for_the_validation_it_was_given():
    # A resumed run: 50 s committed, its last validation took 10 s (state.json's validation_seconds).
    clock = BudgetClock(100.0, committed_seconds=50.0, validation_seconds=10.0)
    assert not clock.spent(39.0) and clock.spent(40.0)
    clock.epoch_done(45.0, validation_seconds=4.0)  # the next epoch's own validation replaces it
    assert not clock.spent(0.9) and clock.spent(1.0)


def test_no_epoch_starts_that_would_validate_longer_than_it_trains():
    # 100 s budget: after 84 s used and a 8 s validation, 8 s are left to train: just enough.
    clock = BudgetClock(100.0)
    clock.epoch_done(84.0, validation_seconds=8.0)
    assert clock.another_epoch_pays()
    clock = BudgetClock(100.0)
    clock.epoch_done(84.5, validation_seconds=8.0)  # 7.5 s to train, 8 s to validate: stop here
    assert not clock.another_epoch_pays() and not clock.spent(0.0)
    # Counted from a resumed run's committed seconds as well.
    clock = BudgetClock(100.0, committed_seconds=60.0, validation_seconds=8.0)
    clock.epoch_done(20.0, validation_seconds=12.0)
    assert not clock.another_epoch_pays()


def test_the_compiled_step_follows_the_clock_and_the_schedule_survives_a_save(tmp_path):
    """SGD on |w - (-10)| (gradient 1): each step moves w by exactly the rate the schedule gave it."""
    import keras

    schedule = make_schedule(0.1, budget_seconds=100.0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mean_absolute_error")
    clocks, steps = [0.0, 2.5, 5.0, 30.0, 60.0, 99.0, 150.0], []

    class Tick(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            schedule.clock.assign(clocks[batch])
            self.before = float(model.get_weights()[0][0, 0])

        def on_train_batch_end(self, batch, logs=None):
            steps.append(self.before - float(model.get_weights()[0][0, 0]))

    model.fit(np.ones((7, 1)), np.full((7, 1), -10.0), batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[Tick()])
    np.testing.assert_allclose(steps, [budget_lr(c / 100, 0.1) for c in clocks], rtol=1e-4)
    model.save(tmp_path / "m.keras")
    loaded = schedule_of(keras.models.load_model(tmp_path / "m.keras"))
    assert loaded is not None and loaded.get_config() == schedule.get_config()


def test_only_the_default_model_anneals_over_the_budget_and_an_epoch_cap_bounds_it_too():
    import keras

    from train.run import _compile

    def compiled(settings):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
        _compile(model, settings.resolved(), steps_per_epoch=10)
        return schedule_of(model)

    assert (compiled(TrainSettings(model="kibble", minutes=20)).get_config()["budget_seconds"],
            compiled(TrainSettings(model="kibble", minutes=20)).total_steps) == (1200.0, None)
    assert compiled(TrainSettings(model="kibble", minutes=20, epochs=5)).total_steps == 50
    assert compiled(TrainSettings(model="kibble")) is None  # the epoch cosine, as before
    assert compiled(TrainSettings(model="conv2", minutes=20)) is None  # the tutorial's constant rate


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("budget-data"), cats=40, dogs=40, size=(16, 16),
                              shard_size=16, val=0.2, test=0.1)


@pytest.fixture
def small_default_model(monkeypatch):
    """The default model's recipe (AdamW, the budget schedule) on the mlp's few layers, to keep the test fast;
    its runs give small_first and average 0 and upscale 1 (the mlp takes one image size, as it is)."""
    import train.models

    build = train.models.build_model
    monkeypatch.setattr(train.models, "build_model", lambda name, *args, **kw: build("mlp", *args, **kw))


def test_a_budget_stops_the_run_anneals_the_rate_and_extends_on_resume(shards_dir, tmp_path, small_default_model):
    budget, peak, cap, steps = 4.0, TrainSettings().resolved().lr, 1000, 12  # peak: the recipe's rate
    settings = TrainSettings(data=shards_dir, model="kibble", train_size=48, val_size=16, batch_size=4,
                             minutes=budget / 60, epochs=cap, small_first=0.0, average=0.0, upscale=1.0)
    result = train(settings, runs_root=str(tmp_path / "runs"), progress=False)
    run = RunDir(result["run_dir"])
    state, rows = run.state(), run.history()
    assert result["stopped_at_budget"] and state["budget_stop_seconds"] == budget
    assert state["epoch"] == len(rows) < cap and 1 <= rows[-1]["batches"] <= steps
    assert all(row["batches"] == steps for row in rows[:-1])
    used = np.cumsum([row["seconds"] for row in rows])
    assert used[-1] == pytest.approx(state["seconds"], abs=0.01 * len(rows))
    assert state["seconds"] >= budget - 2.0  # less only by the validation pass the stop left room for
    # Each epoch's rate is the schedule's at the share of the budget used by its end; near 0 at the last.
    np.testing.assert_allclose([row["lr"] for row in rows], [budget_lr(u / budget, peak) for u in used], atol=2e-5)
    assert rows[-1]["lr"] < 0.05 * peak
    assert (result["whole_epochs"], result["partial_batches"]) == (
        (len(rows), 0) if rows[-1]["batches"] == steps else (len(rows) - 1, rows[-1]["batches"]))
    whole, part = result["whole_epochs"], result["partial_batches"]
    said = " + ".join([f"{whole} epoch{'s' * (whole != 1)}"] * bool(whole or not part) +
                      [f"{part} batch{'es' * (part != 1)}"] * bool(part))
    assert f"stopped at the time budget after {said} (" in format_summary(result)

    again = train(TrainSettings(), runs_root=str(tmp_path / "runs"), resume=True, progress=False)
    assert again["already_done"] and "already stopped at its time budget" in format_summary(again)

    # Three seconds more: the run continues from the seconds it used, the rate at the schedule's floor.
    extended = state["seconds"] + 3.0
    more = train(TrainSettings(minutes=extended / 60), runs_root=str(tmp_path / "runs"), resume=True,
                 progress=False, given={"minutes"})
    after, new_rows = run.state(), run.history()[len(rows):]
    assert new_rows and run.history()[:len(rows)] == rows
    assert after["seconds"] >= extended - 1.0
    # Counted from the seconds used before (a clock started again would train `extended` seconds more).
    assert sum(row["seconds"] for row in new_rows) < extended - state["seconds"] / 2
    np.testing.assert_allclose([row["lr"] for row in new_rows], FLOOR * peak, rtol=1e-3)
    assert any("time added runs at its final rate" in note for note in more["notes"])
    assert run.config()["minutes"] == extended / 60 and run.config()["minutes_extended_from"] == [budget / 60]
    with pytest.raises(UserError, match="no more than the"):
        train(TrainSettings(minutes=budget / 60 + 0.001), runs_root=str(tmp_path / "runs"), resume=True,
              progress=False, given={"minutes"})
