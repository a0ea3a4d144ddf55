import os
import re
import shutil
import subprocess
import sys

from click.testing import CliRunner

from cli import cli
from shards import load_manifest
from tests.conftest import ROOT
from tests.help_examples import help_examples, parse_example


def test_ingest_help_example_is_an_ingest_command_that_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example, with_labels, on_cluster = help_examples("ingest")
    name, params = parse_example(example, str(tmp_path / "home"))
    assert name == "ingest" and params["input_path"] == str(tmp_path / "home" / "kaggle" / "train")
    assert params["size"] == (94, 125) and params["out"] == os.path.join("data", "shards")
    name, params = parse_example(with_labels, str(tmp_path / "home"))
    assert name == "ingest" and params["labels_file"] == "flowers.csv" and params["input_path"] == "flowers.zip"
    name, params = parse_example(on_cluster, str(tmp_path / "home"))
    assert params["input_path"].startswith("s3://") and params["scheduler"].startswith("tcp://")


def test_ingest_summary_gives_the_manifests_counts(kaggle_dir, tmp_path):
    shutil.copy(os.path.join(kaggle_dir, "cat.0.jpg"), os.path.join(kaggle_dir, "cat.100.jpg"))  # a duplicate
    with open(os.path.join(kaggle_dir, "dog.101.jpg"), "wb") as f:  # skipped: not an image
        f.write(b"not a jpeg")
    out = str(tmp_path / "out")
    args = ["ingest", kaggle_dir, "--out", out, "--size", "16x20", "--scheduler", "sync", "--shard-size", "8"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    manifest = load_manifest(out).data
    lines = result.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["class"])
    splits = lines[header].split()[1:]
    rows = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in lines[header + 1:header + 5]}
    table = {split: [rows[name][i] for name in ("images", "dog", "cat", "shards")] for i, split in enumerate(splits)}
    assert table == {split: [info["count"], *info["class_counts"], len(info["shards"])]
                     for split, info in manifest["splits"].items()}
    assert sum(row[0] for row in table.values()) == 40 and table["train"][:3] == [32, 16, 16]
    totals = lines[header + 5]
    assert totals.startswith(f"{sum(s['count'] for s in manifest['shards'])} images of 2 classes in "
                             f"{len(manifest['shards'])} shards ({sum(s['bytes'] for s in manifest['shards']) / 1e6:,.1f} MB) in {out}; ")
    for name in ("duplicates", "skipped", "excluded"):
        assert re.search(rf"\b{len(manifest[name])} {name}\b", totals), (name, totals)
    assert (len(manifest["duplicates"]), len(manifest["skipped"])) == (1, 1)
    assert f"skipped files and reasons: {os.path.join(out, 'manifest.json')}" in result.stderr

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0
    # A re-run scans the files again (the plan depends on their fingerprints): its progress line, then the verdict.
    *progress, verdict = again.stderr.strip().splitlines()
    assert [line.split(" [")[0] for line in progress] == ["scan"]
    assert verdict == f"{out} already holds this ingest (40 images); nothing to do (--force rebuilds it)."


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
