"""`info --report`: the data report's counts, figures and thumbnails, from a folder and a URL, old manifests too."""
import json
import os
import shutil

import h5py
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from ingest import IngestSettings, ingest
from kibble.data_report import ReportSettings, imbalance, reason_kind, write_data_report
from tests.test_fingerprint import textured

SETTINGS = IngestSettings(size=(16, 20), shard_size=8, val=4, test=4)


def save(image, path, quality=90):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, "JPEG", quality=quality)


def planted(root):
    """14 cats and 6 dogs of distinct pictures, plus: an exact copy of cat 0, two resized re-encodes of cat 1
    (a near-duplicate group of 3), cat 3 re-encoded under dog (a likely label error), an empty and a corrupt file."""
    for kind, count, offset in (("cat", 14, 0), ("dog", 6, 1000)):
        for i in range(count):
            save(textured(offset + i), os.path.join(root, f"{kind}.{i}.jpg"))
    shutil.copy(os.path.join(root, "cat.0.jpg"), os.path.join(root, "cat.900.jpg"))
    for k, size in enumerate(((112, 84), (96, 72))):
        save(textured(1).resize(size, Image.BILINEAR), os.path.join(root, f"cat.51{k + 1}.jpg"), quality=70)
    save(textured(3).resize((100, 75)), os.path.join(root, "dog.77.jpg"), quality=60)
    open(os.path.join(root, "cat.998.jpg"), "wb").close()
    with open(os.path.join(root, "cat.999.jpg"), "wb") as f:
        f.write(b"not a jpeg at all" * 10)
    return root


def ingest_planted(root):
    src = planted(os.path.join(root, "train"))
    ingest(src, os.path.join(root, "shards"), SETTINGS, progress=False, scheduler="sync")
    return src, os.path.join(root, "shards")


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory):
    """The planted set ingested, and `info --report` run on it once for the module: (shard folder, result, OUT)."""
    root = str(tmp_path_factory.mktemp("report"))
    _, data = ingest_planted(root)
    out = os.path.join(root, "out")
    result = CliRunner().invoke(cli, ["info", "--data", data, "--runs", os.path.join(root, "runs"),
                                      "--report", out])
    return data, result, out


def valid_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format == "PNG" and min(image.size) > 50


# The planted set as report.md must describe it.
PLANTED_LINES = [
    "| dog | 4 | 1 | 1 | 6 | 28.6% |",
    "| cat | 9 | 3 | 3 | 15 | 71.4% |",
    "| **all** | 13 | 4 | 4 | 21 | |",
    "Class imbalance (largest / smallest class): **2.50** (cat 15, dog 6).",
    "| width | 96 | 128 | 128 |",
    "| height | 72 | 96 | 96 |",
    "1 file had the same bytes as another and were not ingested again.",
    "- `cat.900.jpg` = `cat.0.jpg`",
    "Label conflicts (identical files under different classes): 0.",
    "2 groups of 5 images (fingerprints within 6 bits); 0 crossing the given splits; 1 under different labels "
    "(likely label errors).",
    "`cat.3.jpg` (cat, left out), `dog.77.jpg` (dog, left out)",
    "- `cat.3.jpg`, `dog.77.jpg` (cat, dog); kept: none",
    "2 files could not be used.",
    "| empty file (0 bytes) | 1 | `cat.998.jpg` |",
    "| not an image (Pillow cannot identify it) | 1 | `cat.999.jpg` |",
    "0 files left out on purpose.",
]


@pytest.mark.parametrize("line", PLANTED_LINES)
def test_the_report_names_the_planted_counts(cli_report, line):
    _, result, out = cli_report
    assert result.exit_code == 0, result.output
    assert line in open(os.path.join(out, "report.md")).read().splitlines()


def test_figures_are_valid_pngs_linked_from_the_report_and_every_member_has_a_thumbnail(cli_report):
    _, result, out = cli_report
    text = open(os.path.join(out, "report.md")).read()
    figures = sorted(os.listdir(os.path.join(out, "figures")))
    assert figures == ["classes.png", "near-01.png", "near-02.png", "sizes.png"]
    for name in figures:
        assert valid_png(os.path.join(out, "figures", name)) and f"](figures/{name})" in text
    # the left-out pair is decoded from the input folder, which is still there: 5 members, 5 thumbnails
    assert ("data report: " + os.path.join(out, "report.md") +
            " (4 figures; 5 thumbnails of 2 near-duplicate groups, 0 shown by name only)") in result.stderr
    assert "shards: " in result.stdout  # info's usual text comes first
    widths = [Image.open(os.path.join(out, "figures", f"near-0{i}.png")).size[0] for i in (1, 2)]
    assert widths[0] / widths[1] == pytest.approx(3 / 2, rel=0.05)  # members side by side: 3, then 2


def test_a_url_is_streamed_and_members_left_out_without_their_input_are_named_only(tmp_path):
    import fsspec

    src, data = ingest_planted(str(tmp_path))
    shutil.rmtree(src)  # the input is gone: the left-out pair cannot be decoded again
    url = f"memory://kibble-report-{os.getpid()}/shards"
    fsspec.filesystem("memory").put(data + "/", url.removeprefix("memory://") + "/", recursive=True)
    out = tmp_path / "out"
    os.makedirs(out / "figures")
    (out / "figures" / "near-07.png").write_bytes(b"a previous report's group")
    try:
        result = write_data_report(url, str(out), ReportSettings(groups=2))
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)
    assert (result["thumbnails"], result["placeholders"], result["groups_drawn"]) == (3, 2, 2)
    text = (out / "report.md").read_text()
    assert text.startswith(f"# Data report: {url}\n") and "| **all** | 13 | 4 | 4 | 21 | |" in text
    assert sorted(os.listdir(out / "figures")) == ["classes.png", "near-01.png", "near-02.png", "sizes.png"]
    assert not os.path.exists(os.path.join(data, "report.md"))


def test_n_classes_and_a_bound_on_groups_drawn(tmp_path, monkeypatch):
    src = tmp_path / "in"
    for k, (name, count) in enumerate((("ant", 6), ("bee", 3), ("cow", 2))):
        for i in range(count):
            save(textured(100 * k + i, size=(40 + 8 * i, 60)), str(src / name / f"{i}.jpg"))
    save(textured(0, size=(40, 60)).resize((45, 30)), str(src / "ant" / "copy.jpg"))  # ant 0 again
    save(textured(100, size=(40, 60)).resize((45, 30)), str(src / "bee" / "copy.jpg"))  # bee 0 again
    ingest(str(src), str(tmp_path / "shards"), IngestSettings(size=(16, 20), val=0, test=0), progress=False,
           scheduler="sync")
    monkeypatch.chdir(tmp_path)  # --report without OUT writes ./data-report
    shown = CliRunner().invoke(cli, ["info", "--data", "shards", "--runs", "runs", "--json", "--report",
                                     "--report-groups", "1"])
    assert shown.exit_code == 0, shown.output
    result = json.loads(shown.stdout)["report"]
    assert result["report"] == str(tmp_path / "data-report" / "report.md")
    lines = open(result["report"]).read().splitlines()
    assert "| ant | 7 | 7 | 53.8% |" in lines and "| cow | 2 | 2 | 15.4% |" in lines
    assert "Class imbalance (largest / smallest class): **3.50** (ant 7, cow 2)." in lines
    # sizes as found: height x width 40..80 x 60, the two re-encodes 30 x 45
    assert "| width | 45 | 60 | 60 |" in lines and "| height | 30 | 48 | 80 |" in lines
    assert result["groups_drawn"] == 1 and result["thumbnails"] == 2 and "near-02.png" not in result["figures"]
    assert "1 more groups are listed in manifest.json (\"near_duplicates\")." in lines


def test_a_manifest_and_shards_from_before_near_duplicates_still_report(cli_report, tmp_path):
    data = str(tmp_path / "old")
    shutil.copytree(cli_report[0], data)
    manifest_path = os.path.join(data, "manifest.json")
    manifest = json.load(open(manifest_path))
    for key in ("near_duplicates", "near_duplicate_conflicts", "fingerprint", "original_sizes"):
        del manifest[key]
    for key in ("near_duplicate_groups", "near_duplicate_images", "near_duplicate_groups_crossing_splits",
                "near_duplicate_conflicts"):
        del manifest["totals"][key]
    json.dump(manifest, open(manifest_path, "w"))
    for entry in manifest["shards"]:
        with h5py.File(os.path.join(data, entry["file"]), "a") as f:
            del f["fingerprints"], f["orig_sizes"]
    result = write_data_report(data, str(tmp_path / "out"))
    text = open(result["report"]).read()
    assert "Not looked for: this manifest was written before kibble found near-duplicates" in text
    assert "Not recorded: these shards were written before kibble recorded each image's size" in text
    assert "| **all** | 13 | 4 | 4 | 21 | |" in text
    assert sorted(result["figures"]) == ["classes.png"] and result["images_sized"] == 0


def file_in_the_way(tmp_path, data):
    (tmp_path / "file").write_text("x")
    return str(tmp_path / "file")


# (what OUT is, a fragment of the one-line error)
BAD_OUT = [
    (lambda tmp_path, data: "s3://bucket/report", "--report must be a local folder"),
    (file_in_the_way, "is a file; choose another folder"),
    (lambda tmp_path, data: os.path.join(file_in_the_way(tmp_path, data), "sub"), "a file is in the way"),
    (lambda tmp_path, data: data, "must not be inside the shard folder"),
    (lambda tmp_path, data: os.path.join(data, "report"), "must not be inside the shard folder"),
]


@pytest.mark.parametrize("out,message", BAD_OUT)
def test_a_bad_out_is_one_error_line(cli_report, tmp_path, out, message):
    data = cli_report[0]
    before = sorted(os.listdir(data))
    result = CliRunner().invoke(cli, ["info", "--data", data, "--runs", str(tmp_path / "runs"),
                                      "--report", out(tmp_path, data)])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert sorted(os.listdir(data)) == before


def test_a_report_without_shards_is_one_error_line(tmp_path):
    result = CliRunner().invoke(cli, ["info", "--data", str(tmp_path / "none"), "--runs", str(tmp_path),
                                      "--report", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Error: --report needs shards" in result.stderr
    assert result.stderr.count("\n") == 1 and not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("totals,expected", [([15, 6], 2.5), ([4, 4, 4], 1.0), ([3, 0], float("inf")),
                                             ([0, 0], None), ([], None)])
def test_imbalance(totals, expected):
    assert imbalance(totals) == expected


@pytest.mark.parametrize("reason,kind", [("corrupt image: broken data stream", "corrupt image"),
                                         ("empty file (0 bytes)", "empty file (0 bytes)"), ("", "unknown")])
def test_reasons_are_grouped_by_their_words_before_the_colon(reason, kind):
    assert reason_kind(reason) == kind
