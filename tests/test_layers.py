"""Imports follow the stages' order, never back: shards <- ingest <- train <- evaluate <- kibble <- cli.py.

Read from the source (every import statement, those inside functions too), so a late import cannot hide.
"""
import ast
import os

import pytest

from tests.conftest import ROOT

ORDER = ("shards", "ingest", "train", "evaluate", "kibble", "cli")
# Beyond the order: evaluate scores shards and runs; what made the shards is none of its business.
NOT_IMPORTED = {"evaluate": {"ingest"}}
# The console script's launcher runs cli.py's group: the one import above its own layer.
LAUNCHERS = {os.path.join("kibble", "__main__.py"): {"cli"}}


def _sources(layer):
    if layer == "cli":
        yield "cli.py"
        return
    for folder, _, files in os.walk(os.path.join(ROOT, layer)):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def _imported(path):
    """{(top-level name, line)} of every absolute import in the file."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("layer", ORDER)
def test_a_layer_imports_only_itself_and_the_layers_below(layer):
    allowed = set(ORDER[:ORDER.index(layer) + 1]) - NOT_IMPORTED.get(layer, set())
    wrong = [f"{path}:{line} imports {name}"
             for path in _sources(layer)
             for name, line in sorted(_imported(path))
             if name in ORDER and name not in allowed | LAUNCHERS.get(path, set())]
    assert not wrong, wrong
