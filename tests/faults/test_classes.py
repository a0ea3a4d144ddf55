"""Issue 10, first half: every layout and any number of classes into shards (schema version 2).

Layouts are generated as tiny solid-colour images whose red channel encodes
their class (by name), so a test can tell from the shards' pixels alone that
every image kept its label. Each layout case is one line of LAYOUTS.
"""
import json
import os
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from ingest import IngestSettings, ingest
from ingest.plan import class_order
from shards import ShardError, ShardReader, UserError, load_manifest, verify_shards
from shards.image import load_image

SETTINGS = IngestSettings(size=(8, 8), shard_size=16, val=0.2, test=0.2)
# One red level per class name used below; green/blue vary with the file number.
RED = {"cat": 10, "dog": 40, "daisy": 70, "roses": 100, "tulips": 130, "apple": 160, "pear": 190,
       "shirt": 220, "skirt": 250}


def _image(path, cls, number, fmt=None, serial=0):
    """A solid image whose red says its class; green and blue, from `number` and `serial`, keep
    every file of a tree distinct even after lossy JPEG (steps of 8 levels, not 1)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    colour = (RED[cls], 8 * (number % 32), 8 * (serial % 32))
    Image.new("RGB", (12 + number % 5, 10), colour).save(path, format=fmt)


def _red_class(image):
    red = float(np.mean(image[..., 0]))
    return min(RED, key=lambda name: abs(RED[name] - red))


def _tree(root, spec):
    """spec: [(relative path pattern with {i}, class, count, format)] -> files under root."""
    for serial, (pattern, cls, count, fmt) in enumerate(spec):
        for i in range(count):
            _image(os.path.join(root, pattern.format(i=i, cls=cls)), cls, i, fmt, serial)
    return root


def _run(src, out, settings=SETTINGS, **kwargs):
    return ingest(str(src), str(out), settings, scheduler="sync", progress=False, **kwargs)


def _read_back(out):
    """{split: [(name, class name)]} from the shards, after checking pixels agree with labels."""
    manifest = load_manifest(str(out))
    assert verify_shards(manifest) == []
    found = {}
    for entry in manifest.shards():
        with ShardReader(manifest.shard_path(entry)) as shard:
            assert shard.classes == manifest.classes
            labels, images, names = shard.labels, shard.read(0, shard.count), shard.names
        for label, image, name in zip(labels.tolist(), images, names):
            cls = manifest.classes[label] if label >= 0 else None
            if cls is not None:
                assert _red_class(image) == cls, (name, cls)
            found.setdefault(entry["split"], []).append((name, cls))
    return manifest, found


NESTED = [("roses/garden/a/{i}.jpg", "roses", 5, "JPEG"), ("tulips/{i}.png", "tulips", 5, "PNG"),
          ("daisy/x/y/z/{i}.JPG", "daisy", 5, "JPEG")]
PRESPLIT = [(f"{folder}/{{cls}}/{{i}}.jpg", cls, n, "JPEG")
            for folder, n in (("train", 6), ("validation", 2), ("test", 3)) for cls in ("shirt", "skirt")]
FORMATS = [("apple/{i}.JPG", "apple", 2, "JPEG"), ("apple/p{i}.Png", "apple", 2, "PNG"),
           ("apple/w{i}.WEBP", "apple", 2, "WEBP"), ("pear/b{i}.bmp", "pear", 2, "BMP"),
           ("pear/g{i}.GIF", "pear", 2, "GIF"), ("pear/t{i}.TIFF", "pear", 1, "TIFF"),
           ("pear/t{i}.tif", "pear", 1, "TIFF"), ("apple/j{i}.jpeg", "apple", 2, "JPEG")]


# (case id, files, expected classes, expected layout, {split: per-class counts} or None)
LAYOUTS = [
    ("nested class folders, any names", NESTED, ["daisy", "roses", "tulips"], "class-folders",
     {"train": [3, 3, 3], "val": [1, 1, 1], "test": [1, 1, 1]}),
    ("pre-split train/validation/test kept", PRESPLIT, ["shirt", "skirt"], "pre-split",
     {"train": [6, 6], "val": [2, 2], "test": [3, 3]}),
    ("pre-split val/ alias, no test: test taken from train",
     [(f"{f}/{{cls}}/{{i}}.jpg", c, n, "JPEG") for f, n in (("train", 10), ("val", 2)) for c in ("shirt", "skirt")],
     ["shirt", "skirt"], "pre-split", {"train": [8, 8], "val": [2, 2], "test": [2, 2]}),
    ("names carrying any class word", [("{cls}.{i}.jpg", "apple", 5, "JPEG"), ("{cls}.{i}.png", "pear", 5, "PNG")],
     ["apple", "pear"], "kaggle", {"train": [3, 3], "val": [1, 1], "test": [1, 1]}),
    ("every format, any extension case", FORMATS, ["apple", "pear"], "class-folders", None),
    ("Cat/ and Dog/ folders: dog, cat", [("Cat/{i}.jpg", "cat", 5, "JPEG"), ("Dog/{i}.jpg", "dog", 5, "JPEG")],
     ["dog", "cat"], "class-folders", {"train": [3, 3], "val": [1, 1], "test": [1, 1]}),
    ("Kaggle names: dog, cat", [("train/cat.{i}.jpg", "cat", 5, "JPEG"), ("train/dog.{i}.jpg", "dog", 5, "JPEG")],
     ["dog", "cat"], "kaggle", {"train": [3, 3], "val": [1, 1], "test": [1, 1]}),
]


@pytest.mark.parametrize("case, files, classes, layout, counts", LAYOUTS, ids=[c[0] for c in LAYOUTS])
@pytest.mark.parametrize("packed", ["folder", "zip"])
def test_every_layout_keeps_each_image_with_its_class(tmp_path, case, files, classes, layout, counts, packed):
    src = _tree(str(tmp_path / "in"), files)
    os.makedirs(os.path.join(src, ".hidden"))  # hidden files and folders are not images of anything
    _image(os.path.join(src, ".hidden", "x.jpg"), "cat", 1)
    open(os.path.join(src, ".DS_Store"), "wb").write(b"\0")
    if packed == "zip":
        archive = tmp_path / "in.zip"
        with zipfile.ZipFile(archive, "w") as z:
            for folder, _, names in os.walk(src):
                for name in names:
                    path = os.path.join(folder, name)
                    z.write(path, "top/" + os.path.relpath(path, src))  # a zip's usual wrapper folder
        src = archive
    result = _run(src, tmp_path / "out")
    assert result["classes"] == classes
    assert result["source"]["layout"] == (layout if packed == "folder" else f"zip:{layout}")
    assert result["totals"]["skipped"] == 0, result["skipped"]
    manifest, found = _read_back(tmp_path / "out")
    total = sum(count for _, _, count, _ in files)
    assert sum(len(v) for v in found.values()) == total
    if counts is not None:
        assert {s: manifest.class_counts(s) for s in ("train", "val", "test")} == counts
    for names in found.values():  # the class of each file is the one its path or name says
        for name, cls in names:
            assert cls.lower() in name.lower()


def test_resplit_ignores_the_given_splits(tmp_path):
    src = _tree(str(tmp_path / "in"), PRESPLIT)
    result = _run(src, tmp_path / "out", IngestSettings(size=(8, 8), val=0.2, test=0.2, resplit=True))
    # 11 images a class: 0.2 of 11 = 2.2 -> 2 each for val and test, 7 for train
    assert [result["splits"][s]["class_counts"] for s in ("train", "val", "test")] == [[7, 7], [2, 2], [2, 2]]
    assert result["settings"]["resplit"] is True


def test_stratified_split_of_three_uneven_classes_and_exact_counts(tmp_path):
    src = _tree(str(tmp_path / "in"), [("{cls}/{i}.jpg", "daisy", 20, "JPEG"), ("{cls}/{i}.jpg", "roses", 10, "JPEG"),
                                       ("{cls}/{i}.jpg", "tulips", 5, "JPEG")])
    result = _run(src, tmp_path / "f", IngestSettings(size=(8, 8), val=0.1, test=0.2))
    # half up per class: val 2, 1, 0.5 -> 1; test 4, 2, 1
    assert [result["splits"][s]["class_counts"] for s in ("train", "val", "test")] == \
        [[14, 7, 3], [2, 1, 1], [4, 2, 1]]
    exact = _run(src, tmp_path / "c", IngestSettings(size=(8, 8), val=7, test=5))
    # largest remainder of 7 over 20/10/5: 4, 2, 1; of 5: 2.86, 1.43, 0.71 -> 3, 1, 1
    assert exact["splits"]["val"]["class_counts"] == [4, 2, 1]
    assert exact["splits"]["test"]["class_counts"] == [3, 1, 1]
    assert exact["splits"]["val"]["count"] == 7 and exact["splits"]["test"]["count"] == 5


@pytest.mark.parametrize("found, expected", [
    ({"b", "a", "C"}, ["C", "a", "b"]),            # Python's sort, as Keras's sorted(os.listdir)
    ({"cat", "dog"}, ["dog", "cat"]),
    ({"Cat", "Dog"}, ["dog", "cat"]),
    ({"cats", "dogs"}, ["dog", "cat"]),
    ({"cat", "dog", "bird"}, ["bird", "cat", "dog"]),  # not exactly Dogs vs. Cats: sorted
])
def test_class_order(found, expected):
    assert class_order(found)[1] == expected


def test_classes_option_chooses_orders_and_subsets(tmp_path):
    src = _tree(str(tmp_path / "in"), NESTED)
    result = _run(src, tmp_path / "out", IngestSettings(size=(8, 8), val=0.2, test=0.2, classes=("tulips", "daisy")))
    assert result["classes"] == ["tulips", "daisy"] and result["excluded_classes"] == ["roses"]
    assert result["totals"]["images"] == 10 and result["totals"]["excluded"] == 5
    assert {e["reason"] for e in result["excluded"]} == {"class 'roses' is not in --classes"}
    _, found = _read_back(tmp_path / "out")
    assert {cls for names in found.values() for _, cls in names} == {"tulips", "daisy"}
    with pytest.raises(UserError, match="--classes names 'lily', not a class of this input; its classes are: "
                                        "daisy, roses, tulips"):
        _run(src, tmp_path / "bad", IngestSettings(size=(8, 8), classes=("lily", "daisy")))


def test_a_class_too_small_for_its_share_is_warned_about(tmp_path):
    src = _tree(str(tmp_path / "in"), [("{cls}/{i}.jpg", "daisy", 20, "JPEG"), ("{cls}/{i}.jpg", "roses", 2, "JPEG")])
    result = _run(src, tmp_path / "out", IngestSettings(size=(8, 8), val=0.1, test=0.1))
    assert result["warnings"] == ["class 'roses' has 2 image(s): 2 train, 0 val, 0 test (val=0.1, test=0.1); "
                                  "too few for its share of validation and test"]
    cli_run = CliRunner().invoke(cli, ["-q", "ingest", src, "--out", str(tmp_path / "cli"), "--size", "8x8",
                                       "--scheduler", "sync"])
    assert cli_run.exit_code == 0 and "Warning: class 'roses' has 2 image(s)" in cli_run.stderr
    assert load_manifest(str(tmp_path / "cli")).data["warnings"] == result["warnings"]


def test_cli_classes_and_summary_show_class_counts(tmp_path):
    src = _tree(str(tmp_path / "in"), PRESPLIT)
    out = str(tmp_path / "out")
    result = CliRunner().invoke(cli, ["ingest", src, "--out", out, "--size", "8x8", "--scheduler", "sync",
                                      "--classes", "skirt,shirt"])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stderr.splitlines()]
    header = lines.index(["class", "train", "val", "test"])
    assert lines[header + 1:header + 5] == [["skirt", "6", "2", "3"], ["shirt", "6", "2", "3"],
                                            ["images", "12", "4", "6"], ["shards", "1", "1", "1"]]
    info = CliRunner().invoke(cli, ["info", "--data", out, "--runs", str(tmp_path / "runs"), "--json"])
    data = json.loads(info.stdout)["data"]
    assert data["classes"] == ["skirt", "shirt"] and data["splits"]["test"]["class_counts"] == [3, 3]


@pytest.mark.parametrize("fmt, name", [("JPEG", "a.JPG"), ("PNG", "a.pNg"), ("WEBP", "a.WebP"), ("BMP", "a.BMP"),
                                       ("GIF", "a.gif"), ("TIFF", "a.TIF"), ("TIFF", "a.tiff"),
                                       ("PNG", "png-named.jpg")])  # by content, not by name
def test_load_image_decodes_each_format(tmp_path, fmt, name):
    path = str(tmp_path / name)
    Image.new("RGB", (20, 10), (200, 30, 90)).save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    image = load_image(path, size=(8, 8))
    assert image.shape == (8, 8, 3)
    assert np.abs(image.astype(int) - [200, 30, 90]).max() <= (8 if fmt == "JPEG" else 2)


def test_a_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert load_image(str(tmp_path / "a.gif"), size=(8, 8))[..., 0].min() > 200


def _three_class_shards(tmp_path):
    src = _tree(str(tmp_path / "in"), NESTED)
    _run(src, tmp_path / "shards")
    return str(tmp_path / "shards")


# Train and predict take more than two classes (tests/test_multiclass_train.py).
def test_evaluate_refuses_more_than_two_classes(tmp_path):
    data = _three_class_shards(tmp_path)
    runner = CliRunner()
    run = tmp_path / "runs" / "fake"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": data, "image_size": [8, 8], "fit": "stretch",
                                                 "classes": ["daisy", "roses", "tulips"]}))
    result = runner.invoke(cli, ["evaluate", str(run)])  # evaluate takes N classes now: it looks for the model
    assert result.exit_code == 2 and "no best.keras in" in result.stderr, result.output
    assert result.stderr.count("\n") == 1, result.output


def test_a_schema_1_folder_is_refused_with_one_line_telling_to_ingest_again(tmp_path):
    data = _three_class_shards(tmp_path)
    path = os.path.join(data, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest["schema_version"] = 1
    with open(path, "w") as f:
        json.dump(manifest, f)
    for command in (["info", "--data", data, "--runs", str(tmp_path / "r")], ["verify", "--data", data],
                    ["train", "--data", data, "--runs", str(tmp_path / "r")]):
        result = CliRunner().invoke(cli, command)
        text = result.stdout + result.stderr
        assert "written by an earlier kibble (shard schema version 1" in text and "`ingest --force`" in text, command
    with ShardReader(os.path.join(data, "train-00000.h5")) as shard:
        assert shard.attrs["schema_version"] == 2
    import h5py
    with h5py.File(os.path.join(data, "train-00000.h5"), "r+") as h5:
        h5.attrs["schema_version"] = 1
    with pytest.raises(ShardError, match="schema version 1, expected 2"):
        ShardReader(os.path.join(data, "train-00000.h5"))


def test_labels_take_int16_beyond_127_classes(tmp_path):
    from shards import write_shard

    classes = [f"c{i:03d}" for i in range(200)]
    with write_shard(str(tmp_path / "s.h5"), height=4, width=4, capacity=3, attrs={"split": "train"},
                     classes=classes) as writer:
        for label in (199, -1, 0):
            writer.append(np.zeros((4, 4, 3), np.uint8), label, f"{label}.jpg")
    with ShardReader(str(tmp_path / "s.h5")) as shard:
        assert shard.labels.dtype == np.int16 and shard.labels.tolist() == [199, -1, 0]
        assert shard.class_counts[199] == 1 and sum(shard.class_counts) == 2
        shard.verify_content()
