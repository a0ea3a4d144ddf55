"""Start-up check: the names kibble imports are kibble's own files.

kibble's stages are top-level packages with common names (`shards`, `ingest`,
`train`, `evaluate`) beside a module `cli`. Another distribution may install
the same name: Hugging Face's `evaluate`, often found beside TensorFlow, is
one. Python imports whichever it meets first, and an editable install's
finder comes after site-packages, so a namesake there wins; kibble would
then fail much later with an AttributeError that names neither package.
This check looks where each name resolves, without importing it, before
any stage is loaded, and says what to do. docs/installing.md explains.
"""
import importlib.util
import os
import sys

# The folder holding kibble/ and, beside it, every name below.
HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> the file it must resolve to, relative to HOME.
OWN_FILES = {
    "shards": os.path.join("shards", "__init__.py"),
    "ingest": os.path.join("ingest", "__init__.py"),
    "train": os.path.join("train", "__init__.py"),
    "evaluate": os.path.join("evaluate", "__init__.py"),
    "cli": "cli.py",
}


def resolves_to(name):
    """The file `import name` loads (or would load), without importing it; None if none is found."""
    try:
        spec = importlib.util.find_spec(name)  # the loaded module's spec, if it is loaded
    except (ImportError, ValueError):  # a broken namesake: not ours either way
        return None
    if spec is None:
        return None
    if spec.origin in (None, "namespace"):  # a folder without __init__.py found first
        return next(iter(spec.submodule_search_locations or []), None)
    return spec.origin


def foreign_names(names=OWN_FILES):
    """[(name, where it resolves or None)] for each name that is not kibble's own file."""
    found = []
    for name in names:
        where = resolves_to(name)
        own = os.path.join(HOME, OWN_FILES[name])
        if where is None or os.path.realpath(where) != os.path.realpath(own):
            found.append((name, where))
    return found


def clash_message(name, where):
    """One line: which name is not kibble's, where it comes from, and what to do."""
    own = os.path.join(HOME, OWN_FILES[name])
    if where is None:
        found = f"Python finds no `{name}` at all (kibble's is {own}): the installation is incomplete"
    else:
        found = (f"`import {name}` loads {where}{_distribution(name)}, not kibble's {own}: another package "
                 f"uses the name `{name}`")
    return (f"{found}. Install kibble in a virtual environment of its own (python -m venv .venv; "
            f".venv/bin/pip install -e .), or run `python cli.py` from its folder; see docs/installing.md")


def _distribution(name):
    """' (installed by X)' naming the other distributions that ship `name`, when Python knows them."""
    try:
        from importlib.metadata import packages_distributions

        others = sorted(set(packages_distributions().get(name, [])) - {"kibble"})
    except Exception:  # noqa: BLE001 - only a hint; a broken metadata entry must not hide the message
        return ""
    return f" (installed by {', '.join(others)})" if others else ""


def require_own_packages(names=OWN_FILES):
    """Exit with one `Error:` line and code 2 when a name resolves to another package's file."""
    clashes = foreign_names(names)
    if clashes:
        print(f"Error: {clash_message(*clashes[0])}", file=sys.stderr)
        raise SystemExit(2)
