"""The errors a command reports, and their exit codes.

0 done; 1 an evaluation gate failed (:class:`GateFailed`); 2 bad input (:class:`SalmonInputError`,
or a path the system refused); 3 a service could not be reached (:class:`ServiceUnavailable`, or
a connection error); :data:`UNEXPECTED_EXIT` (4) anything else, a bug. Each prints one line on
stderr (:func:`report`, :func:`report_unexpected`), never a traceback unless asked for.
"""

from __future__ import annotations

import os


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


UNEXPECTED_EXIT = 4
"""Exit code of an error salmon did not foresee (a bug): one line, the traceback in a log file."""

_CONNECTION_ERRORS = {"MaxRetryError", "NewConnectionError", "ConnectTimeoutError", "ConnectionError",
                      "ReadTimeoutError", "ProtocolError", "RemoteDisconnected", "gaierror", "EndpointConnectionError"}
"""Class names (urllib3, requests, http.client, socket, botocore) of a service that cannot be reached."""


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def unreachable(error: BaseException) -> BaseException | None:
    """The exception in ``error``'s chain that says a service could not be reached, if any."""
    for e in _chain(error):
        if isinstance(e, ConnectionError | TimeoutError) or any(
                c.__name__ in _CONNECTION_ERRORS for c in type(e).__mro__):
            return e
    return None


def report_unexpected(error: BaseException, *, debug: bool = False) -> int:
    """The one line a command prints for an exception it did not raise on purpose, and its exit
    code: a service that cannot be reached is exit 3 (``unavailable:``); a file or folder the
    system refused (``OSError`` with a path) is exit 2 (``error:``); anything else is a bug, exit
    :data:`UNEXPECTED_EXIT`, with the traceback written to a log file (printed with ``debug``)."""
    import sys
    import tempfile
    import time
    import traceback
    from pathlib import Path

    down = unreachable(error)
    if down is not None:
        print(f"unavailable: {str(down)[:300] or type(down).__name__} (check that the service runs and its address "
              "is right, then run the command again)", file=sys.stderr)
        return 3
    if isinstance(error, OSError) and error.filename is not None:
        what = error.strerror or type(error).__name__
        print(f"error: {error.filename}: {what} (check the path and its permissions)", file=sys.stderr)
        return 2
    text = "".join(traceback.format_exception(error))
    if debug:
        print(text, file=sys.stderr, end="")
        return UNEXPECTED_EXIT
    folder = Path(tempfile.gettempdir()) / "salmon-errors"
    log = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        log.write_text(text, encoding="utf-8")
        where = f"the traceback is in {log}"
    except OSError:
        where = "rerun with --debug (or SALMON_DEBUG=1) for the traceback"
    line = str(error).splitlines()[0][:300] if str(error) else ""
    print(f"internal error: {type(error).__name__}: {line} (a bug in salmon; {where})", file=sys.stderr)
    return UNEXPECTED_EXIT
