"""Options shared by several commands, so they read and behave the same everywhere."""

from __future__ import annotations

import typer

from cdev.plugins import DEFAULT_PROVIDER, PROVIDER_ENV

ProviderOption = typer.Option(
    DEFAULT_PROVIDER,
    "--provider",
    "-p",
    envvar=PROVIDER_ENV,
    metavar="NAME[:ARG]",
    help="Crypto provider (see 'cdev plugins'), e.g. software, virtio, virtio:/dev/cryptodev1.",
)

PassphraseFileOption = typer.Option(
    None,
    "--passphrase-file",
    metavar="FILE",
    help="Read the passphrase from FILE (else CDEV_PASSPHRASE, else a prompt).",
)
