import hashlib
import os

import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from evaluate.demo import DemoSettings, run_demo
from ingest.synthetic import SIDE_RANGE, draw_picture, make_demo_images
from shards.errors import UserError


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


def test_small_demo_runs_end_to_end_and_again(tmp_path):
    workdir = str(tmp_path / "demo")
    settings = DemoSettings(per_class=25, size=(24, 32), val=0.2, test=0.2, epochs=1)
    lines = []
    result = run_demo(workdir, settings=settings, progress=False, log=lines.append)
    assert result["images"] == os.path.join(workdir, "images", "train")
    assert len(os.listdir(result["images"])) == 50
    assert os.path.exists(result["report"]) and result["report"].startswith(result["run_dir"])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert set(result["seconds"]) == {"images", "ingest", "train", "evaluate", "total"}
    assert lines[-1] == f"demo: report {result['report']}"
    assert any(line.startswith("demo: test accuracy ") and "on 10 images" in line for line in lines)

    # Again: the pictures and shards are reused; a finished run is not touched, a new one is made.
    lines.clear()
    second = run_demo(workdir, settings=settings, progress=False, log=lines.append)
    assert any("reusing the 50 generated images" in line for line in lines)
    assert second["run_dir"] != result["run_dir"] and os.path.exists(result["report"])
    assert sorted(os.listdir(os.path.join(workdir, "runs"))) == sorted(
        ["LATEST", os.path.basename(result["run_dir"]), os.path.basename(second["run_dir"])])


def test_demo_command_reports_a_missing_folder(tmp_path):
    result = CliRunner().invoke(cli, ["demo", str(tmp_path / "nope"), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "does not exist" in result.output
    with pytest.raises(UserError, match="no image folder at"):
        run_demo(str(tmp_path / "w"), source=str(tmp_path / "nope"))
