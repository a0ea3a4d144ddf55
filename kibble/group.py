"""The command group's conduct: user mistakes as one `Error:` line, TensorFlow imported quietly."""
import click


class KibbleGroup(click.Group):
    """Turns the library's UserError (and a disk error) into a one-line message and exit code 2."""

    def invoke(self, ctx):
        from shards.errors import UserError
        from shards.fsio import DISK_ERRORS, disk_error_message

        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except OSError as exc:  # a full disk, a read-only folder: the user's to fix, not a bug
            if exc.errno not in DISK_ERRORS:
                raise
            click.echo(f"Error: {disk_error_message(exc)}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            run_dir = getattr(exc, "run_dir", None)  # train.run.TrainingInterrupted
            click.echo(f"Interrupted: {exc}. Resume with:\n  kibble train --resume --run-dir {run_dir}"
                       if run_dir else "Interrupted.", err=True)
            ctx.exit(130)


def user_facing(exc):
    """True for the errors KibbleGroup reports as a user's mistake (exit 2)."""
    from shards.errors import UserError
    from shards.fsio import DISK_ERRORS

    return isinstance(exc, UserError) or (isinstance(exc, OSError) and exc.errno in DISK_ERRORS)


class TensorFlowCommand(click.Command):
    """A command that needs TensorFlow: imported quietly once its options are
    parsed, so `--help` stays instant."""

    def invoke(self, ctx):
        from train.tf_env import import_tensorflow

        import_tensorflow(verbose=ctx.find_root().obj.get("verbose", False))
        return super().invoke(ctx)


class TrainingCommand(click.Command):
    """`train`: it imports TensorFlow itself once it knows the model (train.tf_env.import_tensorflow's `model`)."""

    def invoke(self, ctx):
        from train.tf_env import process_settings

        process_settings()  # a bad KIBBLE_PROCESS is still the first thing reported
        return super().invoke(ctx)


def say(ctx, message):
    """A progress line or summary on stderr, unless the user passed --quiet."""
    if not ctx.find_root().obj.get("quiet"):
        click.echo(message, err=True)
