"""Where ``cdev crypt`` reads and writes.

A regular output file appears whole or not at all: a temporary file beside the target,
renamed over it only after everything was written and synced. An output that is not a
regular file is never replaced: a FIFO or a character device (``/dev/null``, a terminal) is
written through, like standard output; a symbolic link is followed, so that the file it
points to is replaced and the link stays; anything else is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from cdev.errors import CdevError, UsageError

STDIO = "-"
STDOUT_NAME = "standard output"


def _describe(exc: OSError, verb: str, path: str) -> CdevError:
    if exc.errno == errno.ENOSPC:
        return CdevError(f"cannot {verb} {path}: no space left on device")
    if exc.errno == errno.EPIPE:
        return CdevError(f"cannot {verb} {path}: the reader closed the pipe")
    return CdevError(f"cannot {verb} {path}: {exc.strerror or exc}")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _streams(mode: int) -> bool:
    """Outputs written through rather than replaced: nothing on them can be overwritten."""
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


@contextlib.contextmanager
def open_input(name: str) -> Iterator[BinaryIO]:
    """The input, unbuffered: every reader here asks for whole batches and loops on short
    reads. A worker thread may be left blocked in a read of a pipe when cdev exits on an
    error; a buffered reader would hold its lock there, and Python aborts at exit when it
    finds the lock of ``sys.stdin`` taken."""
    if name == STDIO:
        if sys.stdin is None:  # started with descriptor 0 closed
            raise CdevError("cannot read standard input: it is closed")
        raw = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115
        try:
            yield _guard(cast(BinaryIO, raw), "read", "standard input")
        finally:
            raw.close()
        return
    try:
        f = open(name, "rb", buffering=0)  # noqa: SIM115 - closed below, errors mapped to one line
    except OSError as exc:
        raise CdevError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        if stat.S_ISDIR(os.fstat(f.fileno()).st_mode):
            raise CdevError(f"cannot read {name}: it is a directory")
        yield _guard(f, "read", name)
    finally:
        f.close()


def check_output(output: str, input_name: str, force: bool) -> None:
    """Refuse, as a usage error, outputs that cdev must not write: before any work is done."""
    if output == STDIO:
        return
    try:
        st = os.stat(output)  # follows a symbolic link: what matters is what it points to
    except FileNotFoundError:
        if os.path.islink(output):
            raise UsageError(
                f"output {output} is a symbolic link to a missing file; name the target itself"
            ) from None
        return
    except OSError as exc:
        raise UsageError(f"cannot use output {output}: {exc.strerror or exc}") from None
    if input_name != STDIO:
        with contextlib.suppress(OSError):
            if os.path.samefile(output, input_name):
                raise UsageError(f"refusing to write over the input {input_name}")
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"output {output} is a directory")
    if _streams(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(
            f"output {output} is a {_kind(st.st_mode)}; cdev writes regular files, "
            "FIFOs and character devices only"
        )
    if not force:
        raise UsageError(f"{output} already exists; use --force to overwrite it")


class _Guarded:
    """A stream whose I/O errors become one-line :class:`CdevError`s naming it, so that a
    failed write is never mistaken for a failed read, or shown as a traceback."""

    def __init__(self, f: BinaryIO, verb: str, name: str, on_error: Callable[[], None]) -> None:
        self._f, self._verb, self._name, self._on_error = f, verb, name, on_error

    def _fail(self, exc: OSError) -> CdevError:
        self._on_error()
        return _describe(exc, self._verb, self._name)

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except OSError as exc:
            raise self._fail(exc) from None

    def readinto(self, buf: memoryview) -> int:
        try:
            return self._f.readinto(buf)  # type: ignore[attr-defined, no-any-return]
        except OSError as exc:
            raise self._fail(exc) from None

    def write(self, data: bytes | memoryview) -> int:
        # An unbuffered stream (a pipe) may take only part of a large write: keep going, or
        # the rest would be lost without an error.
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = self._f.write(view[done:])
                if not n:
                    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
                done += n
        except OSError as exc:
            raise self._fail(exc) from None
        return done

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            raise self._fail(exc) from None


def _guard(
    f: BinaryIO, verb: str, name: str, on_error: Callable[[], None] = lambda: None
) -> BinaryIO:
    return cast(BinaryIO, _Guarded(f, verb, name, on_error))


def _discard_stdout() -> None:
    """What is still buffered for standard output can never be written: send it nowhere,
    so that Python's own flush at exit does not print a second error."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@contextlib.contextmanager
def _write_through(output: str) -> Iterator[BinaryIO]:
    try:
        # No O_CREAT, no O_TRUNC: this only ever writes into what is already there.
        fd = os.open(output, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _describe(exc, "open", output) from None
    if not _streams(os.fstat(fd).st_mode):  # replaced since check_output looked
        os.close(fd)
        raise UsageError(f"output {output} changed while cdev was starting; try again")
    f = os.fdopen(fd, "wb")
    try:
        out = _guard(f, "write", output)
        yield out
        out.flush()
    finally:
        # After a failed write the buffer cannot be flushed either: the error is reported.
        with contextlib.suppress(OSError):
            f.close()


@contextlib.contextmanager
def atomic_output(output: str) -> Iterator[BinaryIO]:
    """Yield a file to write; on success it replaces ``output``, on any error it vanishes.

    ``-``, FIFOs and character devices are written as the data comes and cannot be taken
    back: callers document that. Call :func:`check_output` first.
    """
    if output == STDIO:
        if sys.stdout is None:  # started with descriptor 1 closed
            raise CdevError(f"cannot write {STDOUT_NAME}: it is closed")
        out = _guard(sys.stdout.buffer, "write", STDOUT_NAME, _discard_stdout)
        yield out
        out.flush()
        return
    try:
        mode: int | None = os.stat(output).st_mode
    except OSError:
        mode = None
    if mode is not None and _streams(mode):
        with _write_through(output) as f:
            yield f
        return
    # A symbolic link to a regular file: replace the file it points to, keep the link.
    target = Path(os.path.realpath(output)) if mode is not None else Path(output)
    try:
        fd, tmp = tempfile.mkstemp(
            dir=target.parent or ".", prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as exc:
        raise _describe(exc, "create", output) from None
    f = os.fdopen(fd, "wb")
    try:
        if mode is not None:  # the replaced file keeps its permissions (new ones get 0600)
            os.fchmod(fd, stat.S_IMODE(mode))
        yield _guard(f, "write", output)
        try:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, target)
        except OSError as exc:
            raise _describe(exc, "write", output) from None
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
