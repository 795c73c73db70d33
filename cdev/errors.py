"""User-facing errors: one line on stderr and a documented exit code, never a traceback."""

from __future__ import annotations

# Exit codes shared by every command (documented in the README).
EXIT_OK = 0
EXIT_FAILURE = 1  # bad input, failed verification, peer or I/O failure
EXIT_UNAVAILABLE = 2  # a provider/transport/tool cannot work on this machine, or a usage error


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
