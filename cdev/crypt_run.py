"""What ``cdev crypt encrypt|decrypt`` does, apart from parsing its command line.

It imports no CLI framework (and rich only to draw a progress bar on a terminal), so that
:mod:`cdev.fastpath` can run the command without loading typer: see there why.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cdev.atomic import STDIO, atomic_output, check_output, open_input
from cdev.errors import UsageError
from cdev.fileformat import KDF_SCRYPT, decrypt_stream, encrypt_stream, read_header
from cdev.keys import ScryptParams, read_key_file, read_passphrase
from cdev.plugins import DEFAULT_PROVIDER, get_registry
from cdev.rawcbc import decrypt_raw, encrypt_raw, raw_params

SUFFIX = ".cdev"
PROGRESS_MIN = 8 << 20  # no bar for files that take no time
SUITE_CHOICES = ("auto", "1", "2")
RAW_CIPHER_DEFAULT = "aes-128-cbc"


@dataclass
class CryptArgs:
    """One ``cdev crypt encrypt|decrypt`` invocation, as the command line gave it."""

    encrypt: bool
    input_name: str
    output: str | None = None
    provider: str = DEFAULT_PROVIDER
    force: bool = False
    key_file: Path | None = None
    passphrase_file: Path | None = None
    raw: bool = False
    cipher: str = RAW_CIPHER_DEFAULT
    key_hex: str | None = None
    iv_hex: str | None = None
    work_factor: int = ScryptParams().log_n
    suite: str = "auto"


@contextmanager
def _progress(input_name: str, label: str) -> Iterator[Callable[[int], None] | None]:
    size = 0 if input_name == STDIO else os.path.getsize(input_name)
    if not sys.stderr.isatty() or size < PROGRESS_MIN:
        yield None
        return
    # Imported here: rich costs more start-up time than a small file takes to encrypt.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=size)
        yield lambda n: bar.advance(task, n)


def check_suite(suite: str) -> str:
    if suite not in SUITE_CHOICES:
        raise UsageError(f"--suite must be auto, 1 or 2, got {suite!r}")
    return suite


def default_output(input_name: str, encrypt: bool) -> str:
    if input_name == STDIO:
        return STDIO
    if encrypt:
        return input_name + SUFFIX
    if input_name.endswith(SUFFIX) and len(input_name) > len(SUFFIX):
        return input_name[: -len(SUFFIX)]
    raise UsageError(f"{input_name} does not end in {SUFFIX}; name the output with -o")


def run(a: CryptArgs) -> None:
    """Encrypt or decrypt as ``a`` says; errors are :class:`cdev.errors.CdevError`."""
    encrypt, input_name = a.encrypt, a.input_name
    suite = check_suite(a.suite)
    out = a.output or default_output(input_name, encrypt)
    check_output(out, input_name, a.force)
    # Everything that can be refused without a secret is refused before one is asked for.
    if a.raw:
        raw_key, iv = raw_params(a.cipher, a.key_hex, a.iv_hex)
    elif a.key_hex or a.iv_hex:
        raise UsageError("--key and --iv are for --raw; use --key-file for the cdev format")
    params = ScryptParams(log_n=a.work_factor)
    if encrypt and not a.raw:
        params.check()
    key = read_key_file(a.key_file) if a.key_file and not a.raw else None
    registry = get_registry()
    with open_input(input_name) as src:
        header = None if a.raw or encrypt else read_header(src)
        wants_passphrase = encrypt or (header is not None and header[0].kdf == KDF_SCRYPT)
        passphrase = None
        with registry.open_provider(a.provider) as provider:
            if not a.raw and key is None and wants_passphrase:
                passphrase = read_passphrase(a.passphrase_file, confirm=encrypt)
            label = "encrypting" if encrypt else "decrypting"
            with _progress(input_name, label) as progress, atomic_output(out) as dst:
                if a.raw:
                    fn = encrypt_raw if encrypt else decrypt_raw
                    fn(src, dst, provider, raw_key, iv, progress)
                elif encrypt:
                    encrypt_stream(
                        src,
                        dst,
                        provider,
                        passphrase=passphrase,
                        key=key,
                        params=params,
                        progress=progress,
                        suite=None if suite == "auto" else int(suite),
                    )
                else:
                    decrypt_stream(
                        src,
                        dst,
                        provider,
                        passphrase=passphrase,
                        key=key,
                        progress=progress,
                        header_read=header,
                    )
