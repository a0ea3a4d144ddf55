"""A namesake of one of kibble's top-level names (Hugging Face's `evaluate`, a stray `cli.py`) met first on
Python's path is refused at start-up with one `Error:` line naming it, before it is imported.

Each case is one line in CASES: the names faked in a folder placed first on PYTHONPATH, the command run
from another folder (as the installed `kibble` script runs: Python's path does not start at the project),
and what must come out.
"""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

IMPORTED = "a fake package was imported"


def _fake(folder, name):
    """A package (or, for cli, a module) called `name` in `folder` that says so if it is ever imported."""
    body = f"import sys\nsys.exit({IMPORTED!r})\n"
    if name == "cli":
        (folder / "cli.py").write_text(body)
        return str(folder / "cli.py")
    (folder / name).mkdir()
    (folder / name / "__init__.py").write_text(body)
    return str(folder / name / "__init__.py")


CASES = [
    # (case, faked names, command, the name the Error: line must give, or None: it must work)
    ("evaluate-help", ["evaluate"], ["-m", "kibble", "--help"], "evaluate"),
    ("evaluate-command", ["evaluate"], ["-m", "kibble", "info", "--data", "nowhere"], "evaluate"),
    ("train", ["train"], ["-m", "kibble", "--help"], "train"),
    ("ingest-and-shards", ["ingest", "shards"], ["-m", "kibble", "--version"], "shards"),
    ("cli-module", ["cli"], ["-m", "kibble", "--help"], "cli"),
    ("import-cli", ["evaluate"], ["-c", "import cli"], "evaluate"),
    # From a clone, `python cli.py` puts the project first on the path: ours win, nothing to refuse.
    ("clone", ["evaluate", "train"], [os.path.join(ROOT, "cli.py"), "--help"], None),
    ("none", [], ["-m", "kibble", "--help"], None),
]


@pytest.mark.parametrize("fakes, command, name", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_namesake_first_on_the_path_is_one_error_line(tmp_path, fakes, command, name):
    folder = tmp_path / "site"
    folder.mkdir()
    paths = {fake: _fake(folder, fake) for fake in fakes}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), ROOT])}
    proc = subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert IMPORTED not in proc.stderr, proc.stderr
    if name is None:
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: ") and "ingest" in proc.stdout, proc.stderr
        return
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    own = os.path.join(ROOT, "cli.py" if name == "cli" else os.path.join(name, "__init__.py"))
    assert line.startswith(f"Error: `import {name}` loads {paths[name]}, not kibble's {own}: "
                           f"another package uses the name `{name}`. "), line
    assert "virtual environment of its own" in line and "docs/installing.md" in line


def test_python_m_kibble_prints_the_same_help_as_cli_py():
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": ROOT}
    via_module = subprocess.run([sys.executable, "-m", "kibble", "--help"], cwd=ROOT, env=env,
                                capture_output=True, text=True, check=True).stdout
    via_file = subprocess.run([sys.executable, "cli.py", "--help"], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True).stdout
    assert via_module.replace("python -m kibble", "PROG", 1) == via_file.replace("python cli.py", "PROG", 1)
