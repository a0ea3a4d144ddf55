import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli import cli
from kibble.info import info
from ingest import IngestSettings, ingest
from shards import load_manifest
from shards.errors import UserError
from tests.conftest import ROOT, make_kaggle_folder
from tests.help_examples import help_examples, parse_example


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("info")
    src = make_kaggle_folder(str(root / "train"), cats=20, dogs=20)
    out = str(root / "shards")
    ingest(src, out, IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2), scheduler="sync", progress=False)
    return out


def _fake_run(runs_root, name, shards_dir, epochs_done, accuracies, test_accuracy=None, tta=None):
    """A run directory with the files info reads (no model needed)."""
    run_dir = os.path.join(runs_root, name)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({"model": "conv2", "data": shards_dir, "epochs": 3, "train_size": 24, "val_size": 8}, f)
    with open(os.path.join(run_dir, "state.json"), "w") as f:
        json.dump({"epoch": epochs_done, "best_epoch": 1, "best_val_loss": 0.2, "seconds": 1.0}, f)
    with open(os.path.join(run_dir, "history.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr"])
        for epoch, acc in enumerate(accuracies, 1):
            writer.writerow([epoch, 0.3, 0.8, 0.2, acc, 1.0, 1e-3])
    if test_accuracy is not None:
        with open(os.path.join(run_dir, "metrics.json"), "w") as f:
            json.dump({"threshold": {"value": 0.45, "chosen_on": "val"}, "tta": tta,
                       "splits": {"val": {"accuracy": 0.9}, "test": {"accuracy": test_accuracy}}}, f)
    return run_dir


def test_verify_passes_clean_shards_and_names_a_damaged_one(shards_dir, tmp_path):
    clean = CliRunner().invoke(cli, ["verify", "--data", shards_dir])
    assert clean.exit_code == 0
    assert clean.stdout.strip() == f"OK: 5 shards in {shards_dir} match the manifest"

    damaged = str(tmp_path / "damaged")
    shutil.copytree(shards_dir, damaged)
    victim = load_manifest(damaged).shards("val")[0]["file"]
    path = os.path.join(damaged, victim)
    with open(path, "r+b") as f:  # flip one byte in the middle of the file
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = CliRunner().invoke(cli, ["verify", "--data", damaged])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"FAILED {path}: sha256 differs from the manifest (file damaged or replaced)"]
    assert "1 of 5 shards failed" in result.stderr


def test_verify_without_shards_says_to_ingest(tmp_path):
    result = CliRunner().invoke(cli, ["verify", "--data", str(tmp_path / "none")])
    assert result.exit_code == 2 and "run `ingest` first" in result.stderr


def test_info_shows_splits_and_runs(shards_dir, tmp_path):
    runs = str(tmp_path / "runs")
    _fake_run(runs, "conv2-a", shards_dir, 3, [0.6, 0.75, 0.7], test_accuracy=0.72)
    _fake_run(runs, "conv2-b", shards_dir, 1, [0.55])
    _fake_run(runs, "conv2-c", shards_dir, 3, [0.6, 0.7, 0.8], test_accuracy=0.81, tta="flip")
    facts = info(shards_dir, runs)
    data = facts["data"]
    assert data["classes"] == ["dog", "cat"]
    assert data["splits"] == {"train": {"count": 24, "class_counts": [12, 12], "shards": 3},
                              "val": {"count": 8, "class_counts": [4, 4], "shards": 1},
                              "test": {"count": 8, "class_counts": [4, 4], "shards": 1}}
    assert (data["image_size"], data["fit"], data["shards"], data["images"]) == ([16, 20], "stretch", 5, 40)
    assert (data["skipped"], data["excluded"], data["duplicates"]) == (0, 0, 0) and data["bytes"] > 0
    by_name = {os.path.basename(r["run"]): r for r in facts["runs"]}
    assert by_name["conv2-a"]["epochs_done"] == 3 and by_name["conv2-a"]["best_val_accuracy"] == 0.75
    assert by_name["conv2-a"]["test_accuracy"] == 0.72
    assert by_name["conv2-b"]["epochs_done"] == 1 and by_name["conv2-b"]["test_accuracy"] is None

    result = CliRunner().invoke(cli, ["info", "--data", shards_dir, "--runs", runs])
    assert result.exit_code == 0
    text = result.stdout
    assert re.search(r"^\s+class\s+train\s+val\s+test$", text, re.M)
    assert re.search(r"^\s+dog\s+12\s+4\s+4$", text, re.M) and re.search(r"^\s+cat\s+12\s+4\s+4$", text, re.M)
    assert re.search(r"^\s+images\s+24\s+8\s+8$", text, re.M)
    assert re.search(r"^\s+shards\s+3\s+1\s+1$", text, re.M)
    assert re.search(r"^\s+conv2-a\s+conv2\s+3/3\s+0\.750\s+0\.720$", text, re.M)
    assert re.search(r"^\s+conv2-b\s+conv2\s+1/3\s+0\.550\s+-$", text, re.M)
    # the last evaluate had --tta: its mirror-averaged figure is marked so
    assert by_name["conv2-c"]["test_scoring"] == "flip" and by_name["conv2-a"]["test_scoring"] == "plain"
    assert re.search(r"^\s+conv2-c\s+conv2\s+3/3\s+0\.800\s+0\.810 tta$", text, re.M)
    as_json = CliRunner().invoke(cli, ["info", "--data", shards_dir, "--runs", runs, "--json"])
    assert json.loads(as_json.stdout)["data"]["splits"]["val"]["count"] == 8


def test_info_shows_missing_pieces_as_absent(shards_dir, tmp_path):
    only_data = info(shards_dir, str(tmp_path / "no-runs"))
    assert only_data["runs"] == [] and only_data["data"]["images"] == 40
    runs = str(tmp_path / "runs")
    _fake_run(runs, "conv2-a", shards_dir, 0, [])
    only_runs = info(str(tmp_path / "no-data"), runs)
    assert only_runs["data"] is None and "no manifest.json" in only_runs["data_problem"]
    assert only_runs["runs"][0]["best_val_accuracy"] is None
    result = CliRunner().invoke(cli, ["info", "--data", str(tmp_path / "no-data"), "--runs", runs])
    assert result.exit_code == 0 and "shards: none in" in result.stdout
    with pytest.raises(UserError, match="run `ingest` first"):
        info(str(tmp_path / "no-data"), str(tmp_path / "no-runs"))
    nothing = CliRunner().invoke(cli, ["info", "--data", str(tmp_path / "no-data"), "--runs", str(tmp_path / "x")])
    assert nothing.exit_code == 2 and "run `ingest` first" in nothing.stderr


@pytest.mark.parametrize("command", ["demo", "predict", "info", "verify", "evaluate", "compare", None])
def test_every_help_example_is_a_command_that_parses(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for line in help_examples(command):
        name, params = parse_example(line, str(tmp_path / "home"))
        assert name == command or (command is None and name in cli.commands), line
        assert params, line


def test_console_script_and_cli_py_print_the_same_help():
    script = os.path.join(os.path.dirname(sys.executable), "kibble")
    assert os.path.exists(script), f"no {script}: install the package first (pip install -e {ROOT})"
    env = {**os.environ, "COLUMNS": "100"}
    via_file = subprocess.run([sys.executable, "cli.py", "--help"], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True).stdout
    via_script = subprocess.run([script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                                check=True).stdout
    assert via_file.startswith("Usage: python cli.py ") and via_script.startswith("Usage: kibble ")
    assert via_file.replace("python cli.py", "PROG", 1) == via_script.replace("kibble", "PROG", 1)
    assert "predict" in via_script and "verify" in via_script
