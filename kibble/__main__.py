"""The `kibble` console script, and `python -m kibble`: check the names kibble imports, then run cli.py.

The script is the one way in where Python's path does not start at the
project's folder, so a namesake `cli`, `evaluate` (Hugging Face's), `train`,
`ingest` or `shards` installed in site-packages would be imported instead of
ours. The check runs first and names the clash (see kibble/packages.py).
"""
from kibble.packages import require_own_packages


def main(prog_name=None):
    require_own_packages()
    from cli import cli  # the command group; it sits above kibble/, so it is imported only here

    return cli(prog_name=prog_name)


if __name__ == "__main__":
    main(prog_name="python -m kibble")
