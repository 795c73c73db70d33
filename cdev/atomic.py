"""Outputs that appear whole or not at all: a temporary file beside the target, renamed
over it only after everything was written and synced."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cdev.errors import CdevError

STDIO = "-"


def _describe(exc: OSError, action: str, path: str) -> CdevError:
    if exc.errno == errno.ENOSPC:
        return CdevError(f"no space left on device while {action} {path}")
    return CdevError(f"cannot {action.removesuffix('ing')} {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def open_input(name: str) -> Iterator[BinaryIO]:
    if name == STDIO:
        yield sys.stdin.buffer
        return
    try:
        f = open(name, "rb")  # noqa: SIM115 - closed below, errors mapped to one line
    except OSError as exc:
        raise CdevError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        if os.path.isdir(name):
            raise CdevError(f"cannot read {name}: it is a directory")
        yield f
    finally:
        f.close()


def check_output(output: str, input_name: str, force: bool) -> None:
    if output == STDIO:
        return
    out = Path(output)
    if input_name != STDIO:
        with contextlib.suppress(OSError):
            if out.exists() and os.path.samefile(out, input_name):
                raise CdevError(f"refusing to write over the input {input_name}")
    if out.is_dir():
        raise CdevError(f"output {output} is a directory")
    if out.exists() and not force:
        raise CdevError(f"{output} already exists; use --force to overwrite it")


@contextlib.contextmanager
def atomic_output(output: str) -> Iterator[BinaryIO]:
    """Yield a file to write; on success it replaces ``output``, on any error it vanishes.

    ``-`` is standard output, which cannot be taken back: callers document that.
    """
    if output == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(output)
    try:
        fd, tmp = tempfile.mkstemp(
            dir=target.parent or ".", prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as exc:
        raise _describe(exc, "creating", output) from None
    f = os.fdopen(fd, "wb")
    try:
        try:
            yield f
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, target)
        except OSError as exc:
            raise _describe(exc, "writing", output) from None
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
