"""Command line of kibble: `python cli.py COMMAND` or, once installed, `kibble COMMAND`.

A table of contents: the group and its commands. Each command lives in
kibble/commands/<name>.py, the options they share in kibble/options.py.
"""
from kibble.packages import require_own_packages

# Before any stage is imported: a namesake package (Hugging Face's `evaluate`) must not be the one loaded.
require_own_packages()

import click  # noqa: E402

from kibble.commands.check_outside import check_outside  # noqa: E402
from kibble.commands.compare import compare  # noqa: E402
from kibble.commands.demo import demo  # noqa: E402
from kibble.commands.evaluate import evaluate  # noqa: E402
from kibble.commands.info import info  # noqa: E402
from kibble.commands.ingest import ingest  # noqa: E402
from kibble.commands.predict import predict  # noqa: E402
from kibble.commands.train import train  # noqa: E402
from kibble.commands.verify import verify  # noqa: E402
from kibble.group import KibbleGroup  # noqa: E402
from train.tf_env import quiet_logs  # noqa: E402

__version__ = "0.1.0"


@click.group(cls=KibbleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kibble")
@click.option("-v", "--verbose", is_flag=True, help="Show library logs, TensorFlow's included.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries.")
@click.pass_context
def cli(ctx, verbose, quiet):
    """kibble: stream image folders into HDF5 shards and train Keras models on
    them in bounded memory.

    \b
    Example, on Kaggle's Dogs vs. Cats:
      python cli.py ingest ~/kaggle/dogs-vs-cats      # -> data/shards
      python cli.py train --full                     # -> runs/<model>-<time>
      python cli.py evaluate                         # newest run
    """
    ctx.ensure_object(dict)
    ctx.obj.update(verbose=verbose, quiet=quiet)
    quiet_logs(verbose)


cli.add_command(ingest)  # image folder -> shards
cli.add_command(train)  # shards -> a run directory
cli.add_command(evaluate)  # run -> metrics.json, report.md, figures
cli.add_command(compare)  # runs -> one Markdown table
cli.add_command(demo)  # all three on a small data set
cli.add_command(predict)  # run + image files -> cat or dog
cli.add_command(check_outside)  # run + labelled outside photos -> the release check
cli.add_command(info)  # what has been ingested and trained
cli.add_command(verify)  # shards against their manifest


if __name__ == "__main__":
    cli(prog_name="python cli.py")
