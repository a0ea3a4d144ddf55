"""Errors shared by every stage.

A `UserError` is a mistake the user can fix (a wrong path, an option out of
range, data that is missing). The command line prints its message on one line
and exits with code 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message says what to do."""


class ShardError(UserError):
    """A shard is missing, damaged or disagrees with the manifest."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"shard {self.path}: {problem}")
