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
