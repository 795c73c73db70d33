"""The ``cryptodev`` provider: the host kernel's ``/dev/crypto`` (cryptodev-linux)."""

from __future__ import annotations

from collections.abc import Callable

from cdev.hookspecs import hookimpl
from cdev.ioctl_provider import IoctlProvider
from cdev.provider import Provider

DEFAULT_PATH = "/dev/crypto"


class CryptodevProvider(IoctlProvider):
    name = "cryptodev"
    description = "cryptodev-linux's /dev/crypto through ioctl (CIOCGSESSION, CIOCCRYPT, ...)"
    unavailable_hint = (
        "load the cryptodev-linux module (modprobe cryptodev) or use --provider software"
    )


def open_cryptodev(arg: str | None) -> Provider:
    return CryptodevProvider(arg or DEFAULT_PATH)


@hookimpl
def cdev_register_providers(register: Callable[..., None]) -> None:
    register(CryptodevProvider.name, CryptodevProvider.description, open_cryptodev)
