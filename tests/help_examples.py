"""The examples printed by `--help`, checked as commands: each must parse as the shell and click would
parse it, with options that exist and values they accept (sizes, choices, ranges)."""
import os
import shlex

import click
from click.testing import CliRunner

from cli import cli


def help_examples(command=None):
    """The example lines of `python cli.py [COMMAND] --help`, as the user sees them."""
    result = CliRunner().invoke(cli, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Example"))
    examples = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        examples.append(line.strip())
    assert examples, f"no example under 'Example' in the help of {command or 'the group'}"
    return examples


def parse_example(line, home):
    """(command name, its parsed parameters) of one example line; raises click's error if it does not parse.

    Run it in a temporary working folder: a path the command requires to exist (demo's FOLDER) is
    created there first, and `~` stands for `home`, as a shell would expand it.
    """
    tokens = shlex.split(line.split("#", 1)[0])
    if ">" in tokens:  # the shell's redirection, not the command's
        tokens = tokens[:tokens.index(">")]
    assert tokens[:2] == ["python", "cli.py"] and len(tokens) > 2, line
    name, args = tokens[2], [home + token[1:] if token.startswith("~/") else token for token in tokens[3:]]
    command = cli.commands.get(name)
    assert command is not None, f"{line!r}: kibble has no command {name!r}"
    root = click.Context(cli, info_name="cli.py", obj={})
    raw, _, _ = command.make_parser(click.Context(command, info_name=name, parent=root)).parse_args(list(args))
    for param in command.params:
        if isinstance(param.type, click.Path) and param.type.exists:
            values = raw.get(param.name)
            for value in values if isinstance(values, (list, tuple)) else [values]:
                if isinstance(value, str) and not param.type.dir_okay:  # a file option (--labels)
                    open(value, "a").close()
                elif isinstance(value, str):  # given in the example (click marks an absent one otherwise)
                    os.makedirs(value, exist_ok=True)
    return name, command.make_context(name, list(args), parent=root).params
