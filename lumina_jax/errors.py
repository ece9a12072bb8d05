"""The one base class for mistakes a user can fix (bad config, bad data, wrong path).

The CLI prints a `UserError` as one line (`lumina-jax <command>: error: ...`) and exits 2;
anything else is a bug and keeps its traceback. Messages name the file or field and the fix.
"""


class UserError(Exception):
    """A problem with the user's input, config or files, not with lumina-jax."""
