"""compare --out when the write fails part-way: the table written before stays whole, no temporary file is left.

The runs are made by hand with a current metrics.json (its checkpoint_sha256 is best.keras's), so compare
reads them without evaluating and the case needs no TensorFlow. A new way to fail the write is one line in
LIMIT_CASES: the file-size limit (RLIMIT_FSIZE) under which the table is written.
"""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

OLD_TABLE = "| an earlier table |\n"


def _run(runs, name):
    """A run directory whose metrics.json is current for its best.keras."""
    run = os.path.join(runs, name)
    os.makedirs(run)
    model = os.urandom(2000)
    with open(os.path.join(run, "best.keras"), "wb") as f:
        f.write(model)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump({"model": "mlp", "params": 1234, "train_size": 40, "val_size": 10}, f)
    with open(os.path.join(run, "history.csv"), "w") as f:
        f.write("epoch,loss,accuracy,val_loss,val_accuracy,seconds\n1,0.3,0.8,0.2,0.75,2.5\n")
    with open(os.path.join(run, "metrics.json"), "w") as f:
        json.dump({"checkpoint": "best.keras", "checkpoint_sha256": hashlib.sha256(model).hexdigest(),
                   "threshold": {"value": 0.5, "chosen_on": "val"},
                   "splits": {"val": {"mse": 0.1, "roc_auc": 0.9}, "test": {"accuracy": 0.8}}}, f)
    return run


LIMIT_CASES = [
    # (case, RLIMIT_FSIZE in bytes: each write beyond it fails with EFBIG)
    ("nothing-fits", 0),
    ("part-fits", 64),
]


@pytest.mark.parametrize("limit", [case[1] for case in LIMIT_CASES], ids=[case[0] for case in LIMIT_CASES])
def test_a_failed_table_write_leaves_the_earlier_table_whole(tmp_path, limit):
    runs = [_run(str(tmp_path / "runs"), name) for name in ("mlp-a", "mlp-b")]
    out = tmp_path / "tables" / "compare.md"
    out.parent.mkdir()
    out.write_text(OLD_TABLE)
    script = ("import resource, signal, sys\n"
              "from evaluate.compare import compare_runs\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
              "compare_runs(sys.argv[2:], out=sys.argv[1], progress=False)\n")
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(out), *runs], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "OSError: [Errno 27] File too large" in proc.stderr, proc.stderr
    assert out.read_text() == OLD_TABLE
    assert os.listdir(out.parent) == ["compare.md"]

    again = subprocess.run([sys.executable, "-c", script.replace(f"({limit},", "(resource.RLIM_INFINITY,"),
                            str(out), *runs], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| mlp-a | mlp | 1,234 |") and lines[3].startswith("| mlp-b |")
