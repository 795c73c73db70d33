"""``cdev crypt``: encrypt and decrypt files through a provider."""

from __future__ import annotations

from pathlib import Path

import typer

from cdev.commands.options import PassphraseFileOption, ProviderOption
from cdev.crypt_run import RAW_CIPHER_DEFAULT, CryptArgs, run
from cdev.keys import MIN_LOG_N, ScryptParams

app = typer.Typer(
    help="Encrypt and decrypt files (authenticated cdev format, or raw openssl-compatible CBC).",
    no_args_is_help=True,
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
    RAW_CIPHER_DEFAULT, "--cipher", help="--raw cipher: aes-128-cbc, aes-192-cbc, aes-256-cbc."
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
    run(
        CryptArgs(
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
            suite,
        )
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
    run(
        CryptArgs(
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
        )
    )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="crypt")
