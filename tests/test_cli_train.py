import os
import subprocess
import sys

from click.testing import CliRunner

from cli import cli
from tests.conftest import ROOT
from train.run import ALL_IMAGES


def test_train_help_examples_parse_and_help_is_fast(tmp_path, monkeypatch):
    from tests.help_examples import help_examples, parse_example

    monkeypatch.chdir(tmp_path)
    parsed = [parse_example(line, str(tmp_path)) for line in help_examples("train")]
    assert [(name, p["full"], p["resume"]) for name, p in parsed] == [
        ("train", True, False), ("train", True, False), ("train", False, False), ("train", True, False),
        ("train", True, False), ("train", True, False), ("train", False, True), ("train", False, False)]
    assert parsed[7][1]["runs_root"] == "s3://my-bucket/runs"
    assert parsed[0][1]["model_name"] == "conv2"
    assert (parsed[1][1]["minutes"], parsed[1][1]["small_first"], parsed[1][1]["average"]) == (60.0, None, None)
    assert (parsed[2][1]["train_size"], parsed[2][1]["val_size"]) == (ALL_IMAGES, 2500)
    assert (parsed[3][1]["minutes"], parsed[3][1]["small_first"], parsed[3][1]["average"]) == (60.0, 0.0, 0.0)
    assert parsed[4][1]["label_smoothing"] == 0.1
    assert (parsed[5][1]["upscale"], parsed[0][1]["upscale"]) == (1.0, None)
    # Fast: --help must not pay for TensorFlow, Keras or Dask (seconds of imports) in a fresh interpreter.
    probe = ("import sys, cli\ntry:\n    cli.cli(['train', '--help'], prog_name='python cli.py')\n"
             "except SystemExit:\n    pass\nprint(sorted({'tensorflow', 'keras', 'dask'} & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Example:" in proc.stdout and proc.stdout.splitlines()[-1] == "[]", proc.stderr


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


def test_each_setting_the_command_line_counts_as_given_is_one_of_its_options():
    """An option named unlike its setting and missing from the map would slip past --resume's refusal."""
    from kibble.commands.train import _TRAIN_FIELDS, train as command
    from train.run import FIXED_ON_RESUME

    options = {p.name for p in command.params}
    counted = {option for option in _TRAIN_FIELDS if option in options}
    assert counted == set(_TRAIN_FIELDS) - {"window"}  # the pipeline's window has no option
    given = {name for option in counted for name in _TRAIN_FIELDS[option]}
    assert set(FIXED_ON_RESUME) - {"window"} <= given
