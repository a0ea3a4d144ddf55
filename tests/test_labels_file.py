"""`ingest --labels FILE`: a CSV names each image and its class (issue 10, item 4)."""
import os
import re
import zipfile

import pytest
from click.testing import CliRunner

from cli import cli
from ingest import IngestSettings, ingest
from shards import ShardReader, UserError, load_manifest
from tests.conftest import make_image

SETTINGS = IngestSettings(size=(8, 8), shard_size=50, val=0.25, test=0.25)
FLOWERS = ("daisy", "rose", "tulip")
NAMES = [f"img{i}.jpg" for i in range(12)]
TRUTH = {name: FLOWERS[i % 3] for i, name in enumerate(NAMES)}


def make_images(folder, names=NAMES):
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        make_image(os.path.join(folder, name), i % 2, i, size=(20 + i, 16))
    return str(folder)


def write(path, text, encoding="utf-8"):
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return str(path)


def run(src, out, labels, settings=SETTINGS):
    return ingest(str(src), str(out), settings, scheduler="sync", progress=False, labels=labels)


def labels_read_back(out):
    """{name: class name} of every labelled image in the shards of `out`."""
    manifest = load_manifest(str(out))
    classes, found = manifest.data["classes"], {}
    for split in manifest.data["splits"]:
        for entry in manifest.shards(split):
            with ShardReader(manifest.shard_path(entry)) as shard:
                for name, label in zip(shard.names, shard.labels.tolist()):
                    found[name] = classes[label] if label >= 0 else None
    return found


def _rows(sep=",", fmt="{}"):
    return [sep.join((fmt.format(name), TRUTH[name])) for name in NAMES]


# Each CSV variant: the file's text. Every one must give TRUTH.
CSV_VARIANTS = [
    ("header path,label", "path,label\n" + "\n".join(_rows()) + "\n"),
    ("no header", "\n".join(_rows()) + "\n"),
    ("BOM, CRLF, filename,class", "\ufefffilename,class\r\n" + "\r\n".join(_rows()) + "\r\n"),
    ("header case, extra columns first", "ID,Image,Notes,Category\n"
     + "\n".join(f"{i},{n},\"a, b\",{TRUTH[n]}" for i, n in enumerate(NAMES)) + "\n"),
    ("quoted fields and blank lines", "\n\"path\",\"label\"\n\n"
     + "\n\n".join(f"\"{n}\",\"{TRUTH[n]}\"" for n in NAMES) + "\n\n"),
    ("tab-separated", "file\tlabel\n" + "\n".join(_rows("\t")) + "\n"),
    ("semicolon, no header", "\n".join(_rows(";")) + "\n"),
    ("./ and spaces around", "path , label\n" + "\n".join(f" ./{n} , {TRUTH[n]} " for n in NAMES) + "\n"),
    ("label then path with header", "class,image\n" + "\n".join(f"{TRUTH[n]},{n}" for n in NAMES) + "\n"),
]


@pytest.mark.parametrize("text", [text for _, text in CSV_VARIANTS], ids=[name for name, _ in CSV_VARIANTS])
def test_csv_variants_give_the_same_labels(tmp_path, text):
    src = make_images(tmp_path / "in")
    result = run(src, tmp_path / "out", write(tmp_path / "labels.csv", text))
    assert result["classes"] == list(FLOWERS)
    assert result["source"]["layout"] == "labels-file"
    assert result["source"]["labels"] == str(tmp_path / "labels.csv")
    assert labels_read_back(tmp_path / "out") == TRUTH
    assert result["totals"]["skipped"] == result["totals"]["excluded"] == 0


# Each bad row: the line added to a good file, the name it is listed under, and a piece of its reason.
BAD_ROWS = [
    ("nope.jpg,rose", "nope.jpg", "line 14 of the labels file: not found under INPUT"),
    ("../outside.jpg,rose", "../outside.jpg", "leads outside INPUT"),
    ("sub/../../outside.jpg,rose", "sub/../../outside.jpg", "leads outside INPUT"),
    ("{src}/img1.jpg,rose", "{src}/img1.jpg", "an absolute path"),
    ("notes.txt,rose", "notes.txt", "not an image file name"),
    ("sub,rose", "sub", "a folder, not an image file"),
    (",rose", "(line 14 of the labels file)", "no path"),
    ("img0.jpg,tulip", "img0.jpg", "different labels or splits: daisy/no split (line 2), tulip/no split (line 14)"),
    ("img0.jpg,daisy,holdout", "img0.jpg", "split 'holdout' is not one of"),
]


@pytest.mark.parametrize("line,name,reason", BAD_ROWS, ids=[row[0] for row in BAD_ROWS])
def test_a_bad_row_is_skipped_with_its_reason_and_the_rest_ingested(tmp_path, line, name, reason):
    src = make_images(tmp_path / "in")
    make_image(str(tmp_path / "outside.jpg"), 0, 99)
    make_images(tmp_path / "in", ["sub/x.jpg"])  # a folder; x.jpg itself is not named
    write(tmp_path / "in" / "notes.txt", "not an image")
    header = "path,label,split\n" if "holdout" in line else "path,label\n"
    text = header + "\n".join(_rows()) + "\n" + line.format(src=src) + "\n"
    result = run(src, tmp_path / "out", write(tmp_path / "labels.csv", text))
    assert [entry["name"] for entry in result["skipped"]] == [name.format(src=src)]
    assert reason in result["skipped"][0]["reason"]
    kept = {n: c for n, c in TRUTH.items() if not (n == "img0.jpg" and "tulip" in line)}
    assert labels_read_back(tmp_path / "out") == kept
    assert result["excluded"] == [{"name": "sub/x.jpg", "reason": "not in labels file"}]


def test_a_path_named_twice_with_one_label_is_read_once(tmp_path):
    src = make_images(tmp_path / "in")
    text = "\n".join(_rows()) + "\nimg3.jpg,daisy\n./img3.jpg,daisy\n"
    result = run(src, tmp_path / "out", write(tmp_path / "labels.csv", text))
    assert result["totals"]["images"] == 12 and result["totals"]["skipped"] == 0
    assert labels_read_back(tmp_path / "out") == TRUTH


def test_images_not_named_are_excluded_empty_label_is_unlabelled_other_files_ignored(tmp_path):
    src = make_images(tmp_path / "in", NAMES + ["extra/a.png", "later.jpg"])
    labels = write(tmp_path / "in" / "labels.csv", "\n".join(_rows()) + "\nlater.jpg,\n")  # inside INPUT
    result = run(src, tmp_path / "out", labels)
    assert result["excluded"] == [{"name": "extra/a.png", "reason": "not in labels file"}]
    assert result["splits"]["unlabeled"]["count"] == 1
    assert labels_read_back(tmp_path / "out") == {**TRUTH, "later.jpg": None}
    assert result["totals"]["skipped"] == 0  # labels.csv itself is neither skipped nor excluded


def test_split_column_and_split_folders_are_kept_unless_resplit(tmp_path):
    # Pre-split folders whose layout carries no class: the folder gives the split, the file the label.
    names = [f"{split}/{i}.jpg" for split in ("train", "validation") for i in range(6)] + ["extra/t0.jpg",
                                                                                           "extra/t1.jpg"]
    src = make_images(tmp_path / "in", names)
    rows = [f"{n},{FLOWERS[i % 2]}," for i, n in enumerate(names[:-2])]
    rows += ["extra/t0.jpg,daisy,test", "extra/t1.jpg,rose,Test"]
    labels = write(tmp_path / "labels.csv", "path,label,split\n" + "\n".join(rows) + "\n")
    result = run(src, tmp_path / "out", labels)
    counts = {split: info["count"] for split, info in result["splits"].items()}
    assert counts == {"train": 6, "val": 6, "test": 2}
    assert result["classes"] == ["daisy", "rose"]
    resplit = run(src, tmp_path / "resplit", labels,
                  IngestSettings(size=(8, 8), val=0.25, test=0.25, resplit=True))
    assert {s: i["count"] for s, i in resplit["splits"].items()} == {"train": 6, "val": 4, "test": 4}


def test_zip_input_with_a_wrapper_folder_and_classes_option(tmp_path):
    src = make_images(tmp_path / "in")
    archive = tmp_path / "flowers.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in NAMES:
            z.write(os.path.join(src, name), f"flowers/{name}")
    # Paths relative to the zip's single top folder, as a CSV made beside the images would say.
    labels = write(tmp_path / "labels.csv", "image,class\n" + "\n".join(_rows()) + "\n")
    result = run(archive, tmp_path / "out", labels,
                 IngestSettings(size=(8, 8), val=0, test=0, classes=("tulip", "daisy")))
    assert result["source"]["layout"] == "zip:labels-file"
    assert result["classes"] == ["tulip", "daisy"]
    found = labels_read_back(tmp_path / "out")
    assert found == {f"flowers/{n}": c for n, c in TRUTH.items() if c != "rose"}
    assert sorted(e["name"] for e in result["excluded"]) == sorted(f"flowers/{n}" for n, c in TRUTH.items()
                                                                   if c == "rose")


# Each unusable file: its text (or bytes) and a piece of the one-line error.
BAD_FILES = [
    ("empty", "\n\n", "holds no rows"),
    ("header without label", "filename,species\nimg0.jpg,rose\n", "names no label column"),
    ("header without path", "label,notes\nrose,x\n", "names no path column"),
    ("not UTF-8", b"path,label\nimg0.jpg,r\xe9se\n", "is not UTF-8 text"),
    ("absolute paths everywhere", "/data/img0.jpg,rose\n/data/img1.jpg,tulip\n",
     "none of the 2 row(s) of labels file"),
    ("every label empty", "img0.jpg,\nimg1.jpg,\n", "names a labelled image"),
]


@pytest.mark.parametrize("content,message", [(c, m) for _, c, m in BAD_FILES], ids=[n for n, _, _ in BAD_FILES])
def test_an_unusable_labels_file_is_a_one_line_error(tmp_path, content, message):
    src = make_images(tmp_path / "in", NAMES[:2])
    labels = tmp_path / "labels.csv"
    if isinstance(content, bytes):
        labels.write_bytes(content)
    else:
        write(labels, content)
    with pytest.raises(UserError, match=re.escape(message)):
        run(src, tmp_path / "out", str(labels))
    result = CliRunner().invoke(cli, ["ingest", src, "--labels", str(labels), "--out", str(tmp_path / "cli"),
                                      "--scheduler", "sync", "--size", "8x8"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and message in result.output


def test_cli_ingest_with_labels_reports_exclusions(tmp_path):
    src = make_images(tmp_path / "in", NAMES + ["stray.jpg"])
    labels = write(tmp_path / "labels.csv", "\n".join(_rows()) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["ingest", src, "--labels", labels, "--out", str(out), "--scheduler",
                                      "sync", "--size", "8x8", "--val", "0", "--test", "0"])
    assert result.exit_code == 0, result.output
    assert "12 images of 3 classes" in result.output and "1 excluded" in result.output
    again = CliRunner().invoke(cli, ["ingest", src, "--labels", labels, "--out", str(out), "--scheduler",
                                     "sync", "--size", "8x8", "--val", "0", "--test", "0"])
    assert "nothing to do" in again.output
    relabelled = write(tmp_path / "other.csv", "\n".join(_rows()).replace("rose", "lily") + "\n")
    changed = CliRunner().invoke(cli, ["ingest", src, "--labels", relabelled, "--out", str(out),
                                       "--scheduler", "sync", "--size", "8x8", "--val", "0", "--test", "0"])
    assert changed.exit_code == 2 and "different ingest" in changed.output
