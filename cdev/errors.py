"""User-facing errors: one line on stderr and a documented exit code, never a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# Exit codes shared by every command (documented in the README).
EXIT_OK = 0
EXIT_FAILURE = 1  # bad input, failed verification, peer or I/O failure
EXIT_UNAVAILABLE = 2  # a provider/transport/tool cannot work on this machine, or a usage error
EXIT_INTERRUPTED = 130

DEBUG_ENV = "CDEV_DEBUG"  # set: internal errors show their traceback


class CdevError(Exception):
    """An error the user can act on; the CLI prints ``cdev: <message>`` and exits."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UnavailableError(CdevError):
    """A provider, transport or tool that cannot work here; the message says why and what to do."""

    exit_code = EXIT_UNAVAILABLE


class UsageError(CdevError):
    """Bad command-line input that the argument parser could not catch by itself."""

    exit_code = EXIT_UNAVAILABLE


class IntegrityError(CdevError):
    """Authentication failed: wrong key, tampered, reordered or truncated data."""


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def error_exit(exc: BaseException) -> tuple[str | None, int] | None:
    """The one line (or None: say nothing) and exit code for ``exc``, as every command
    reports it; None for exceptions that are not errors to report here."""
    if isinstance(exc, CdevError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        # Reader went away (cdev ... | head): not an error worth a message.
        _silence_stdout()
        return None, EXIT_FAILURE
    if isinstance(exc, Exception) and not os.environ.get(DEBUG_ENV):
        return (
            f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)",
            EXIT_FAILURE,
        )
    return None


def run_guarded(fn: Callable[[], None]) -> int:
    """Run ``fn``; errors become one line on stderr and the exit code."""
    try:
        fn()
    except BaseException as exc:
        found = error_exit(exc)
        if found is None:
            raise
        message, code = found
        if message is not None:
            print(f"cdev: {message}", file=sys.stderr)
        return code
    return 0
