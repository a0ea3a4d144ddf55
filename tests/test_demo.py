import hashlib
import json
import os
import re

import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from kibble.demo import DemoSettings, run_demo
from ingest.synthetic import SIDE_RANGE, draw_picture, make_demo_images
from shards.errors import UserError
from tests.conftest import make_kaggle_folder


def _digests(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_demo_images_are_counted_valid_varied_jpegs_and_deterministic(tmp_path):
    folder = make_demo_images(str(tmp_path / "a"), per_class=12, seed=3)
    assert folder == str(tmp_path / "a" / "train")
    names = sorted(os.listdir(folder))
    assert names == sorted([f"cat.{i}.jpg" for i in range(12)] + [f"dog.{i}.jpg" for i in range(12)])
    sizes = set()
    for name in names:
        with Image.open(os.path.join(folder, name)) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            image.load()
            sizes.add(image.size)
            assert all(SIDE_RANGE[0] <= side <= SIDE_RANGE[1] for side in image.size)
    assert len(sizes) >= 20  # nearly every picture has its own size
    assert len({round(w / h, 1) for w, h in sizes}) >= 4  # portrait, square and landscape

    again = make_demo_images(str(tmp_path / "b"), per_class=12, seed=3)
    other = make_demo_images(str(tmp_path / "c"), per_class=12, seed=4)
    assert _digests(folder) == _digests(again)
    assert set(_digests(folder).values()).isdisjoint(_digests(other).values())


def test_demo_images_reject_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="per_class must be at least 1. Received: per_class=0"):
        make_demo_images(str(tmp_path), per_class=0)
    import numpy as np

    with pytest.raises(ValueError, match="kind must be one of .*Received: kind='cow'"):
        draw_picture("cow", np.random.default_rng(0))


def _check_outputs(result, lines):
    """report.md, metrics.json and the demo's own figures and log lines all give the same numbers."""
    with open(os.path.join(result["run_dir"], "metrics.json")) as f:
        metrics = json.load(f)
    with open(result["report"]) as f:
        report = f.read()
    test, val, threshold = metrics["splits"]["test"], metrics["splits"]["val"], metrics["threshold"]["value"]
    confusion = test["confusion"]
    assert result["test_accuracy"] == test["accuracy"] == (confusion["tp"] + confusion["tn"]) / test["count"]
    assert result["threshold"] == threshold and metrics["threshold"]["chosen_on"] == "val"
    assert f"| accuracy at {threshold:.2f} | {val['accuracy']:.4f} | {test['accuracy']:.4f} |" in report
    assert (f"| images (cats / dogs) | {val['count']} ({val['cats']} / {val['dogs']}) | "
            f"{test['count']} ({test['cats']} / {test['dogs']}) |") in report
    for figure in re.findall(r"\]\((figures/[^)]+)\)", report):
        assert os.path.getsize(os.path.join(os.path.dirname(result["report"]), figure)) > 0, figure
    assert (f"demo: test accuracy {test['accuracy']:.3f} on {test['count']} images at threshold {threshold:.2f} "
            "(chosen on val)") in lines
    assert lines[-1] == f"demo: report {result['report']}"
    assert set(result["seconds"]) == {"images", "ingest", "train", "evaluate", "total"}
    return metrics


def test_small_demo_runs_end_to_end_and_again(tmp_path):
    workdir = str(tmp_path / "demo")
    # A light model for one epoch: this checks the generated pictures' way through every stage;
    # learning is checked below on pictures a small model can learn in seconds.
    settings = DemoSettings(per_class=25, size=(24, 32), val=0.2, test=0.2, model="mlp", epochs=1)
    lines = []
    result = run_demo(workdir, settings=settings, progress=False, log=lines.append)
    assert result["images"] == os.path.join(workdir, "images", "train")
    assert sorted(os.listdir(result["images"])) == sorted(
        [f"cat.{i}.jpg" for i in range(25)] + [f"dog.{i}.jpg" for i in range(25)])
    assert result["report"] == os.path.join(result["run_dir"], "report.md")
    metrics = _check_outputs(result, lines)
    assert (metrics["splits"]["test"]["count"], metrics["splits"]["val"]["count"]) == (10, 10)

    # Again: the pictures and shards are reused; a finished run is not touched, a new one is made.
    lines.clear()
    second = run_demo(workdir, settings=settings, progress=False, log=lines.append)
    assert any("reusing the 50 generated images" in line for line in lines)
    assert second["run_dir"] != result["run_dir"] and os.path.exists(result["report"])
    assert sorted(os.listdir(os.path.join(workdir, "runs"))) == sorted(
        ["LATEST", os.path.basename(result["run_dir"]), os.path.basename(second["run_dir"])])
    _check_outputs(second, lines)


def test_demo_learns_on_its_test_split(tmp_path):
    # Cats reddish, dogs bluish (tests/conftest.py): a few epochs of the mlp separate them, so a demo that
    # trains and scores right ends far above chance (0.5) on its own test split; a broken stage does not.
    source = make_kaggle_folder(str(tmp_path / "train"), cats=30, dogs=30)
    settings = DemoSettings(size=(16, 16), val=0.2, test=0.2, model="mlp", epochs=3, lr=1e-3, seed=0)
    lines = []
    result = run_demo(str(tmp_path / "demo"), source=source, settings=settings, progress=False, log=lines.append)
    assert lines[0] == f"demo: using the images in {source}"
    metrics = _check_outputs(result, lines)
    assert metrics["splits"]["test"]["count"] == 12
    assert result["test_accuracy"] >= 0.9 and metrics["splits"]["test"]["roc_auc"] >= 0.95


def test_demo_command_reports_a_missing_folder(tmp_path):
    result = CliRunner().invoke(cli, ["demo", str(tmp_path / "nope"), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "does not exist" in result.output
    with pytest.raises(UserError, match="no image folder at"):
        run_demo(str(tmp_path / "w"), source=str(tmp_path / "nope"))
