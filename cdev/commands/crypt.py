"""``cdev crypt``: encrypt and decrypt files through a provider."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cdev.atomic import STDIO, atomic_output, check_output, open_input
from cdev.commands.options import PassphraseFileOption, ProviderOption
from cdev.errors import UsageError
from cdev.fileformat import KDF_SCRYPT, decrypt_stream, encrypt_stream, read_header
from cdev.keys import MIN_LOG_N, ScryptParams, read_key_file, read_passphrase
from cdev.plugins import get_registry
from cdev.rawcbc import decrypt_raw, encrypt_raw, raw_params

SUFFIX = ".cdev"
PROGRESS_MIN = 8 << 20  # no bar for files that take no time

app = typer.Typer(
    help="Encrypt and decrypt files (authenticated cdev format, or raw openssl-compatible CBC).",
    no_args_is_help=True,
)


@contextmanager
def _progress(input_name: str, label: str) -> Iterator[Callable[[int], None] | None]:
    size = 0 if input_name == STDIO else os.path.getsize(input_name)
    if not sys.stderr.isatty() or size < PROGRESS_MIN:
        yield None
        return
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


def _check_suite(suite: str) -> str:
    if suite not in ("auto", "1", "2"):
        raise UsageError(f"--suite must be auto, 1 or 2, got {suite!r}")
    return suite


def _default_output(input_name: str, encrypt: bool) -> str:
    if input_name == STDIO:
        return STDIO
    if encrypt:
        return input_name + SUFFIX
    if input_name.endswith(SUFFIX) and len(input_name) > len(SUFFIX):
        return input_name[: -len(SUFFIX)]
    raise UsageError(f"{input_name} does not end in {SUFFIX}; name the output with -o")


def _run(
    encrypt: bool,
    input_name: str,
    output: str | None,
    provider_spec: str,
    force: bool,
    key_file: Path | None,
    passphrase_file: Path | None,
    raw: bool,
    cipher: str,
    key_hex: str | None,
    iv_hex: str | None,
    work_factor: int,
    suite: str = "auto",
) -> None:
    out = output or _default_output(input_name, encrypt)
    check_output(out, input_name, force)
    # Everything that can be refused without a secret is refused before one is asked for.
    if raw:
        raw_key, iv = raw_params(cipher, key_hex, iv_hex)
    elif key_hex or iv_hex:
        raise UsageError("--key and --iv are for --raw; use --key-file for the cdev format")
    params = ScryptParams(log_n=work_factor)
    if encrypt and not raw:
        params.check()
    key = read_key_file(key_file) if key_file and not raw else None
    registry = get_registry()
    with open_input(input_name) as src:
        header = None if raw or encrypt else read_header(src)
        wants_passphrase = encrypt or (header is not None and header[0].kdf == KDF_SCRYPT)
        passphrase = None
        with registry.open_provider(provider_spec) as provider:
            if not raw and key is None and wants_passphrase:
                passphrase = read_passphrase(passphrase_file, confirm=encrypt)
            label = "encrypting" if encrypt else "decrypting"
            with _progress(input_name, label) as progress, atomic_output(out) as dst:
                if raw:
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


InputArg = typer.Argument(..., metavar="INPUT", help="File to read, or - for standard input.")
OutputOpt = typer.Option(
    None, "--output", "-o", metavar="OUTPUT", help="File to write, or - for standard output."
)
ForceOpt = typer.Option(False, "--force", "-f", help="Overwrite OUTPUT if it exists.")
KeyFileOpt = typer.Option(
    None,
    "--key-file",
    metavar="FILE",
    help="A 32-byte key (raw or 64 hex digits) instead of a passphrase.",
)
RawOpt = typer.Option(
    False, "--raw", help="Plain AES-CBC + PKCS#7, as 'openssl enc' (no authentication)."
)
CipherOpt = typer.Option(
    "aes-128-cbc", "--cipher", help="--raw cipher: aes-128-cbc, aes-192-cbc, aes-256-cbc."
)
KeyHexOpt = typer.Option(None, "--key", metavar="HEX", help="--raw key in hex (as openssl -K).")
IvHexOpt = typer.Option(None, "--iv", metavar="HEX", help="--raw IV in hex (as openssl -iv).")


@app.command()
def encrypt(
    input_name: str = InputArg,
    output: str = OutputOpt,
    provider: str = ProviderOption,
    force: bool = ForceOpt,
    key_file: Path = KeyFileOpt,
    passphrase_file: Path = PassphraseFileOption,
    work_factor: int = typer.Option(
        ScryptParams().log_n,
        "--work-factor",
        min=MIN_LOG_N,
        max=ScryptParams().log_n,
        help="scrypt cost as log2(N) for passphrases (memory: N KiB; time doubles per step).",
    ),
    raw: bool = RawOpt,
    cipher: str = CipherOpt,
    key_hex: str = KeyHexOpt,
    iv_hex: str = IvHexOpt,
    suite: str = typer.Option(
        "auto",
        "--suite",
        help="Cipher suite: 2 (AES-256-GCM), 1 (AES-256-CBC + HMAC-SHA256), or auto "
        "(2 when the provider has AES-GCM, else 1). Decryption reads it from the file.",
    ),
) -> None:
    """Encrypt INPUT to INPUT.cdev (or -o OUTPUT), authenticated.

    Example: CDEV_PASSPHRASE=secret cdev crypt encrypt report.pdf
    """
    _run(
        True,
        input_name,
        output,
        provider,
        force,
        key_file,
        passphrase_file,
        raw,
        cipher,
        key_hex,
        iv_hex,
        work_factor,
        _check_suite(suite),
    )


@app.command()
def decrypt(
    input_name: str = InputArg,
    output: str = OutputOpt,
    provider: str = ProviderOption,
    force: bool = ForceOpt,
    key_file: Path = KeyFileOpt,
    passphrase_file: Path = PassphraseFileOption,
    raw: bool = RawOpt,
    cipher: str = CipherOpt,
    key_hex: str = KeyHexOpt,
    iv_hex: str = IvHexOpt,
) -> None:
    """Decrypt INPUT.cdev to INPUT (or -o OUTPUT); any tampering fails, leaving no output.

    Example: cdev crypt decrypt report.pdf.cdev --passphrase-file pass.txt
    """
    _run(
        False,
        input_name,
        output,
        provider,
        force,
        key_file,
        passphrase_file,
        raw,
        cipher,
        key_hex,
        iv_hex,
        0,
    )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="crypt")
