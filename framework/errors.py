"""The one error type users see: the CLI prints its message on one line and exits with code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad path, unknown label, ...); never a bug, so never a traceback."""

    exit_code = 2
