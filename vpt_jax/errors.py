"""The error type for mistakes a user can fix: the CLI prints its message as one line and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input (a path, a config value, a file), with what to do about it."""
