import os
import subprocess
import sys

from click.testing import CliRunner

from cli import cli
from tests.conftest import ROOT


def test_ingest_help_has_an_example():
    result = CliRunner().invoke(cli, ["ingest", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "python cli.py ingest" in result.output


def test_ingest_prints_a_summary(kaggle_dir, tmp_path):
    result = CliRunner().invoke(cli, ["ingest", kaggle_dir, "--out", str(tmp_path / "out"), "--size", "16x20",
                                      "--scheduler", "sync", "--shard-size", "8"])
    assert result.exit_code == 0, result.output
    assert "40 images in" in result.output and "train" in result.output
    again = CliRunner().invoke(cli, ["ingest", kaggle_dir, "--out", str(tmp_path / "out"), "--size", "16x20",
                                     "--scheduler", "sync", "--shard-size", "8"])
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_user_mistakes_exit_2_with_one_line_and_no_traceback(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "ingest", str(tmp_path / "nope"),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"Error: input not found: {tmp_path / 'nope'}"]
    assert not out.exists()


def test_bad_size_is_a_click_error(tmp_path):
    result = CliRunner().invoke(cli, ["ingest", str(tmp_path), "--size", "big"])
    assert result.exit_code == 2 and "size must look like HEIGHTxWIDTH" in result.output
