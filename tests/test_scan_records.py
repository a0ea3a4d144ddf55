"""The scan's compact columns (ingest.scan.ScanTable) and `ingest --near-distance off`.

The plan digest of a small fixed input is pinned: it was measured before the
scan's records became columns, so any change in what the plan decides (the
split, the shards, the fingerprints stored) shows here.
"""
import hashlib
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from ingest import IngestSettings, ingest
from shards import ShardReader, load_manifest
from tests.test_near_duplicates import SETTINGS, folder_with_copies, run

# The plan digest of folder_with_copies() under SETTINGS, and with a
# truncated file and a zero-byte one added (skipped / undecodable records),
# measured on the per-file dict records that came before the columns.
PINNED = {"plain": "4bd5a387ca4506adb8acfcbe76f20becf48a842847d4e16eafed65cff6e50225",
          "damaged": "867b3ad7cce64a966809ffdf19ccc7597c188ea44a13b5d7fa01afe60524008f"}
# What the manifest says beyond the plan (skips, copies, groups, sizes), as a digest of its JSON.
PINNED_REST = {"plain": "afb3345f4ec988e4ea90560e7d5c4715647f2d035461b97a83c55b88c4cb232a",
               "damaged": "1100bed384053c98f100e9b141de20bfef0d24a8423f9027f7dfd75078fc4991"}
REST = ("skipped", "duplicates", "near_duplicates", "near_duplicate_conflicts", "original_sizes", "fingerprint")


def damaged_folder(root):
    folder_with_copies(root)
    with open(os.path.join(root, "cat.0.jpg"), "rb") as f:
        head = f.read(300)
    with open(os.path.join(root, "cat.900.jpg"), "wb") as f:
        f.write(head)  # a JPEG header without its data: hashed, not decodable
    open(os.path.join(root, "dog.900.jpg"), "wb").close()  # empty: skipped by the scan
    return root


@pytest.mark.parametrize("case,make", [("plain", folder_with_copies), ("damaged", damaged_folder)])
def test_the_plan_digest_of_a_fixed_input_is_what_it_was(tmp_path, case, make):
    src = make(str(tmp_path / "train"))
    result = run(src, tmp_path / "out")
    rest = json.dumps({key: result[key] for key in REST}, sort_keys=True)
    assert (result["plan"], hashlib.sha256(rest.encode()).hexdigest()) == (PINNED[case], PINNED_REST[case])


OFF = IngestSettings(**{**SETTINGS.__dict__, "near_distance": None})


def test_off_forms_no_groups_and_gives_the_split_of_before_near_duplicates(tmp_path):
    src = folder_with_copies(str(tmp_path / "train"))
    default, off = run(src, tmp_path / "default"), run(src, tmp_path / "off", OFF)
    assert default["totals"]["near_duplicate_groups"] == 2  # planted: still found by default
    assert off["totals"]["near_duplicate_groups"] == 0 and off["near_duplicates"] == []
    assert off["fingerprint"] == {"kind": None, "bits": None, "near_distance": None}
    # The split before groups existed: the plain seeded split of every image, which for this
    # seed puts a planted group across splits (so groups do change something here).
    from ingest.plan import index_classes, split_items
    from ingest.sources import discover
    classes, items, _ = index_classes(discover(src).items, set(), None)
    plain, _ = split_items(items, OFF, classes)
    named = {split: sorted(names) for split, names in _names(tmp_path / "off").items()}
    assert named == {split: sorted(item.name for item in plain[split]) for split in ("train", "val", "test")}
    assert named != {split: sorted(n) for split, n in _names(tmp_path / "default").items()}
    # Sizes still come from the header, and the shards store fingerprint 0 (unknown).
    assert off["original_sizes"]["count"] == default["original_sizes"]["count"] == 29
    manifest = load_manifest(str(tmp_path / "off"))
    for entry in manifest.shards():
        with ShardReader(manifest.shard_path(entry)) as shard:
            shard.verify_content()
            assert not shard.fingerprints.any() and (shard.orig_sizes > 0).all()


def _names(out):
    manifest = load_manifest(str(out))
    found = {}
    for entry in manifest.shards():
        with ShardReader(manifest.shard_path(entry)) as shard:
            found.setdefault(entry["split"], []).extend(shard.names)
    return found


def test_off_on_the_command_line_with_its_summary_info_and_report(tmp_path):
    src = folder_with_copies(str(tmp_path / "train"))
    out, runner = tmp_path / "out", CliRunner()
    result = runner.invoke(cli, ["ingest", src, "--out", str(out), "--size", "16x20", "--val", "4", "--test", "4",
                                 "--scheduler", "sync", "--near-distance", "off"])
    assert result.exit_code == 0, result.output
    assert "near-duplicates not looked for" in result.output
    assert json.loads((out / "manifest.json").read_text())["settings"]["near_distance"] is None
    shown = runner.invoke(cli, ["info", "--data", str(out), "--runs", str(tmp_path / "runs")])
    assert shown.exit_code == 0 and "near-duplicate groups" not in shown.output, shown.output
    report = runner.invoke(cli, ["info", "--data", str(out), "--report", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Not looked for: ingested with `--near-distance off`" in text


@pytest.mark.parametrize("value", ["16", "-1", "of", "6.5"])
def test_a_bad_near_distance_is_one_line_naming_the_option(tmp_path, value):
    bad = CliRunner().invoke(cli, ["ingest", str(tmp_path), "--out", str(tmp_path / "x"), "--near-distance", value])
    assert bad.exit_code == 2 and "--near-distance" in bad.output and "or off" in bad.output, bad.output
