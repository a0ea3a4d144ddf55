"""Near-duplicate groups during ingest: one split per group, likely label errors left out, pre-split folders
kept and their crossing groups reported, fingerprints in the shards, and the evaluation's label check list."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from evaluate.report import _check_labels_lines
from ingest import IngestSettings, ingest
from ingest.fingerprint import fingerprint
from ingest.plan import split_items
from ingest.sources import Item
from shards import ShardReader, load_manifest
from tests.test_fingerprint import textured

SETTINGS = IngestSettings(size=(16, 20), shard_size=8, val=4, test=4)


def save(image, path, quality=90):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, "JPEG", quality=quality)


def folder_with_copies(root, cats=12, dogs=12, copies=((1, 3), (2, 2))):
    """Kaggle-style cat.N/dog.N of distinct pictures; `copies` (cat number, extra copies) add resized re-encodes."""
    for kind, count, offset in (("cat", cats, 0), ("dog", dogs, 1000)):
        for i in range(count):
            save(textured(offset + i), os.path.join(root, f"{kind}.{i}.jpg"))
    for number, extra in copies:
        for k in range(extra):
            image = textured(number).resize((128 - 16 * (k + 1), 96 - 12 * (k + 1)), Image.BILINEAR)
            save(image, os.path.join(root, f"cat.{500 + 10 * number + k}.jpg"), quality=70)
    return root


def run(src, out, settings=SETTINGS, **kwargs):
    kwargs.setdefault("scheduler", "sync")
    return ingest(str(src), str(out), settings, progress=False, **kwargs)


def test_each_group_lands_whole_in_one_split_and_the_counts_stay_exact(tmp_path):
    src = folder_with_copies(str(tmp_path / "train"))
    for seed in range(4):
        result = run(src, tmp_path / f"out{seed}", IngestSettings(**{**SETTINGS.__dict__, "seed": seed}))
        groups = result["near_duplicates"]
        assert sorted(len(g["members"]) for g in groups) == [3, 4]
        for group in groups:
            assert len({m["split"] for m in group["members"]}) == 1 and not group["crosses_splits"]
            assert {m["label"] for m in group["members"]} == {"cat"}
        assert {s: result["splits"][s]["count"] for s in ("val", "test")} == {"val": 4, "test": 4}
        assert result["totals"]["near_duplicate_groups"] == 2 and result["totals"]["near_duplicate_images"] == 7


def test_the_plan_is_the_same_whatever_runs_the_scan(tmp_path, monkeypatch):
    import ingest.scan

    monkeypatch.setattr(ingest.scan, "CHUNK_FILES", 5)  # several scan tasks, finishing in any order
    src = folder_with_copies(str(tmp_path / "train"))
    plans = {run(src, tmp_path / f"out-{s}", scheduler=s, workers=2)["plan"] for s in ("sync", "threads", "processes")}
    assert len(plans) == 1


def test_shards_store_the_scans_fingerprint_and_original_size(tmp_path):
    src = folder_with_copies(str(tmp_path / "train"), copies=())
    run(src, tmp_path / "out")
    manifest = load_manifest(str(tmp_path / "out"))
    seen = 0
    for entry in manifest.shards():
        with ShardReader(manifest.shard_path(entry)) as shard:
            shard.verify_content()
            for name, value, size in zip(shard.names, shard.fingerprints, shard.orig_sizes):
                with open(os.path.join(src, name), "rb") as f:
                    expected, height, width, _ = fingerprint(f, 10 ** 8)
                assert (int(value), tuple(size)) == (expected, (height, width)) == (expected, (96, 128))
                seen += 1
    assert seen == 24
    assert manifest.data["original_sizes"] == {"count": 24, "width": [128, 128.0, 128], "height": [96, 96.0, 96],
                                               "aspect": {"1.3": 24}}


@pytest.mark.parametrize("policy,kept", [("drop", []), ("first", ["cat.3.jpg"])])
def test_a_group_under_two_labels_is_a_likely_label_error(tmp_path, policy, kept):
    src = folder_with_copies(str(tmp_path / "train"), copies=())
    save(textured(3).resize((100, 75)), os.path.join(src, "dog.77.jpg"), quality=60)  # cat 3, labelled dog
    result = run(src, tmp_path / "out", IngestSettings(**{**SETTINGS.__dict__, "label_conflicts": policy}))
    assert result["near_duplicate_conflicts"] == [
        {"names": ["cat.3.jpg", "dog.77.jpg"], "labels": ["cat", "dog"], "kept": kept}]
    assert result["totals"]["images"] == 24 + 1 - 2 + len(kept)
    names = set()
    for entry in load_manifest(str(tmp_path / "out")).shards():
        with ShardReader(os.path.join(tmp_path, "out", entry["file"])) as shard:
            names |= set(shard.names)
    assert {"cat.3.jpg", "dog.77.jpg"} & names == set(kept)
    [group] = result["near_duplicates"]
    assert [(m["name"], m["split"] is None) for m in group["members"]] == [
        ("cat.3.jpg", not kept), ("dog.77.jpg", True)]


def pre_split(root):
    """train/ and validation/ folders with cat 1 in both (re-encoded): a group the given splits cut."""
    for split, numbers in (("train", range(0, 10)), ("validation", range(10, 14))):
        for kind, offset in (("cat", 0), ("dog", 1000)):
            for i in numbers:
                save(textured(offset + i), os.path.join(root, split, kind, f"{i}.jpg"))
    save(textured(1).resize((100, 75)), os.path.join(root, "validation", "cat", "copy-of-1.jpg"), quality=60)
    return root


def test_given_splits_are_kept_and_a_crossing_group_reported_unless_resplit(tmp_path):
    src = pre_split(str(tmp_path / "in"))
    settings = IngestSettings(size=(16, 20), shard_size=8, val=0.2, test=0.2)
    kept = run(src, tmp_path / "kept", settings)
    [group] = kept["near_duplicates"]
    assert [(m["name"], m["split"]) for m in group["members"]] == [
        ("train/cat/1.jpg", "train"), ("validation/cat/copy-of-1.jpg", "val")]
    assert group["crosses_splits"] and kept["totals"]["near_duplicate_groups_crossing_splits"] == 1
    assert any("1 near-duplicate group(s) cross" in w for w in kept["warnings"])
    resplit = run(src, tmp_path / "resplit", IngestSettings(**{**settings.__dict__, "resplit": True}))
    [group] = resplit["near_duplicates"]
    assert len({m["split"] for m in group["members"]}) == 1 and not group["crosses_splits"]


def test_without_groups_the_split_is_the_plain_seeded_split():
    items = [Item(f"{k}.{i}.jpg", label, None) for label, k in ((0, "dog"), (1, "cat")) for i in range(30)]
    settings = IngestSettings(val=0.2, test=0.1, seed=5)
    plain, _ = split_items(items, settings, ["dog", "cat"])
    rng = np.random.default_rng(5)  # the split as it was before groups: shuffle a class, cut it
    expected = {"val": [], "test": [], "train": []}
    for label in (1, 0):
        mine = [item for item in items if item.label == label]
        shuffled = [mine[i] for i in rng.permutation(len(mine))]
        expected["val"] += shuffled[:6]
        expected["test"] += shuffled[6:9]
        expected["train"] += shuffled[9:]
    for split in ("train", "val", "test"):
        assert plain[split] == [expected[split][i] for i in rng.permutation(len(expected[split]))]


def test_a_group_too_large_for_what_is_left_is_warned_about():
    items = [Item(f"cat.{i}.jpg", 0, None) for i in range(10)]
    group = items[:8]
    splits, warnings = split_items(items, IngestSettings(val=2, test=0), ["cat"], [group])
    assert len(splits["val"]) == 2 and set(map(id, group)) <= set(map(id, splits["train"]))
    splits, warnings = split_items(items, IngestSettings(val=3, test=0), ["cat"], [group])
    assert len(splits["val"]) == 2 and any("val holds 2 of the 3 'cat' images" in w for w in warnings)


def test_cli_summary_info_and_a_bad_near_distance(tmp_path):
    src = folder_with_copies(str(tmp_path / "train"))
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(cli, ["-q", "ingest", src, "--out", str(out), "--size", "16x20", "--val", "4",
                                 "--test", "4", "--scheduler", "sync"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(cli, ["info", "--data", str(out), "--runs", str(tmp_path / "runs")])
    assert "near-duplicate groups: 2 (0 crossing splits, 0 under different labels)" in shown.output
    bad = runner.invoke(cli, ["ingest", src, "--out", str(tmp_path / "x"), "--near-distance", "16"])
    assert bad.exit_code == 2 and "--near-distance" in bad.output and "Traceback" not in bad.output


def test_check_these_labels_lists_validations_most_confident_mistakes():
    results = {"train": {"confident_mistakes": [{"name": "t.jpg", "label": 0, "score": 0.9}]},
               "val": {"confident_mistakes": [{"name": "cat.7.jpg", "label": 1, "score": 0.02},
                                              {"name": "dog|1.jpg", "label": 0, "score": 0.8}]}}
    from evaluate.report import _binary_guess, _class_guess

    lines = _check_labels_lines(results, _binary_guess(0.5))
    assert lines[1] == "## Check these labels" and "t.jpg" not in "\n".join(lines)
    assert lines[-2:] == ["| `cat.7.jpg` | cat | dog | 0.980 |", "| `dog\\|1.jpg` | dog | cat | 0.800 |"]
    many = {"val": {"confident_mistakes": [{"name": f"{i}.jpg", "label": 2, "predicted": 0, "probability": 0.9}
                                           for i in range(14)]}}
    table = _check_labels_lines(many, _class_guess(["a", "b", "c"]))
    assert table[-1] == "| `9.jpg` | c | a | 0.900 |" and len(table) == 7 + 10
    assert _check_labels_lines({"train": results["train"]}, _binary_guess(0.5)) == []


def test_a_group_or_a_left_out_image_moves_only_images_at_the_split_boundaries():
    items = [Item(f"{k}.{i:03d}.jpg", label, None) for label, k in ((0, "dog"), (1, "cat")) for i in range(200)]
    settings = IngestSettings(val=0.1, test=0.1, seed=3)
    plain, _ = split_items(items, settings, ["dog", "cat"])
    where = {item.name: split for split, members in plain.items() for item in members}
    group = [item for item in items if item.name in ("cat.005.jpg", "cat.150.jpg", "cat.151.jpg")]
    grouped, _ = split_items(items, settings, ["dog", "cat"], [group], {"dog.007.jpg"})
    moved = [item.name for split, members in grouped.items() for item in members if where[item.name] != split]
    assert len(moved) <= 6 and "dog.007.jpg" not in {item.name for m in grouped.values() for item in m}
    assert len({split for split, members in grouped.items() for item in members if item in group}) == 1
