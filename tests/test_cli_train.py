import os
import subprocess
import sys

from click.testing import CliRunner

from cli import cli
from tests.conftest import ROOT


def test_train_help_has_an_example_and_is_fast():
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "train --full" in result.output


def test_no_shards_is_one_line_exit_2_saying_to_ingest(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", "--data", str(tmp_path / "none"),
                           "--runs", str(tmp_path / "runs")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "run `ingest` first" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_full_and_sizes_together_are_refused():
    result = CliRunner().invoke(cli, ["train", "--full", "--train-size", "100"])
    assert result.exit_code == 2 and "--full sets both sizes" in result.output


def test_unknown_model_is_a_click_error():
    result = CliRunner().invoke(cli, ["train", "--model", "resnet50"])
    assert result.exit_code == 2 and "resnet50" in result.output
