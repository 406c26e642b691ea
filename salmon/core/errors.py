"""One exception type for bad input from outside the program."""

from __future__ import annotations


class SalmonInputError(Exception):
    """Bad input: a file, a config value, a model or a command-line argument.

    The CLI prints ``str(error)`` (no traceback) and exits with code 2.

    Args:
        source: what was wrong, e.g. a file path, ``file:line`` or ``config key lr``.
        message: what is wrong with it.
        fix: what the user should do about it.
    """

    def __init__(self, source: str, message: str, fix: str | None = None) -> None:
        self.source = source
        self.message = message
        self.fix = fix
        text = f"{source}: {message}"
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class ServiceUnavailable(Exception):
    """A service the task needs (the MLflow tracking server, its artifact store, S3) cannot be
    reached. The CLI prints ``str(error)`` (no traceback) and exits with code 3.

    Args:
        source: the service, e.g. ``MLflow tracking server http://mlflow:5000``.
        message: what failed and what the task did about it.
        fix: what the user should do about it.
    """

    def __init__(self, source: str, message: str, fix: str | None = None) -> None:
        self.source, self.message, self.fix = source, message, fix
        super().__init__(f"{source}: {message}" + (f" ({fix})" if fix else ""))


class GateFailed(Exception):
    """A result fell below a configured threshold (an evaluation gate). The CLI exits with 1."""


_REPORTED: tuple[tuple[type[Exception], int, str], ...] = (
    (SalmonInputError, 2, "error"), (GateFailed, 1, "gate failed"), (ServiceUnavailable, 3, "unavailable"))


def report(error: SalmonInputError | GateFailed | ServiceUnavailable) -> int:
    """Print the one line a command shows for these errors instead of a traceback (``error:``,
    ``gate failed:`` or ``unavailable:``) on stderr, and return the exit code (2, 1 or 3)."""
    import sys

    for kind, code, prefix in _REPORTED:
        if isinstance(error, kind):
            print(f"{prefix}: {error}", file=sys.stderr)
            return code
    raise TypeError(f"not a reported error: {error!r}")
