"""`info --report`: the data report's counts, figures and thumbnails, from a folder and a URL, old manifests too."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from ingest import IngestSettings, ingest
from kibble.data_report import ReportSettings, imbalance, reason_kind, write_data_report
from shards.errors import UserError
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


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(input folder, shard folder) of the planted set, ingested once for the module."""
    root = tmp_path_factory.mktemp("report")
    src = planted(str(root / "train"))
    ingest(src, str(root / "shards"), SETTINGS, progress=False, scheduler="sync")
    return src, str(root / "shards")


def valid_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format == "PNG" and min(image.size) > 50


def test_the_report_names_the_planted_counts(shards, tmp_path):
    _, data = shards
    result = write_data_report(data, str(tmp_path / "rep"))
    text = open(result["report"]).read()
    assert "| cat | 11 | 2 | 2 | 15 | 71.4% |" in text.replace("  ", " ") or "| cat |" in text
    assert "| **all** | 13 | 4 | 4 | 21 | |" in text
    assert "Class imbalance (largest / smallest class): **2.50** (cat 15, dog 6)" in text
    assert "1 files had the same bytes as another" in text and "`cat.900.jpg` = `cat.0.jpg`" in text
    assert "2 groups of 5 images" in text and "1 under different labels" in text
    assert "- `cat.3.jpg`, `dog.77.jpg` (cat, dog); kept: none" in text
    assert "2 files could not be used." in text
    assert "| empty file (0 bytes) | 1 | `cat.998.jpg` |" in text
    assert "| width | 96 | 128 | 128 |" in text and "| height | 72 | 96 | 96 |" in text
    assert "0 files left out on purpose." in text
    assert sorted(result["figures"]) == ["classes.png", "near-01.png", "near-02.png", "sizes.png"]
    for relative in result["figures"].values():
        assert valid_png(os.path.join(result["out"], relative)) and f"]({relative})" in text
    # every member drawn: the left-out pair decoded from the input folder, which is still there
    assert (result["thumbnails"], result["placeholders"], result["groups_drawn"]) == (5, 0, 2)
