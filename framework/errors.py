"""The one error type users see: the CLI prints its message on one line and exits with code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad path, unknown label, ...); never a bug, so never a traceback."""

    exit_code = 2


def user_error_in(exc: BaseException | None) -> UserError | None:
    """The UserError that caused ``exc`` (Hydra wraps what a target raises in its own exception), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
