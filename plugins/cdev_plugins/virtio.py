"""The ``virtio`` provider: our paravirtual device, ``/dev/cryptodevN`` in a QEMU guest.

It speaks the same ioctl ABI as ``/dev/crypto``; the guest module forwards each call over a
virtqueue to the QEMU backend, which does the crypto on the host. ``--provider virtio`` uses
the first node present; ``--provider virtio:/dev/cryptodev1`` picks one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from cdev.errors import UnavailableError
from cdev.hookspecs import hookimpl
from cdev.ioctl_provider import IoctlProvider
from cdev.provider import Provider

# The device's request limit (VCD_MAX_DATA_LEN in kernel/virtio_cryptodev.h); larger
# requests are chained by the shared ioctl code.
MAX_DATA_LEN = 256 * 1024


class VirtioProvider(IoctlProvider):
    name = "virtio"
    description = "virtio-cryptodev: /dev/cryptodevN forwarded to the QEMU host"
    max_request = MAX_DATA_LEN
    unavailable_hint = "boot a guest with the device (cdev vm run) and load the module"


def find_nodes(dev: Path = Path("/dev")) -> list[Path]:
    nodes = [p for p in dev.glob("cryptodev*") if re.fullmatch(r"cryptodev\d+", p.name)]
    return sorted(nodes, key=lambda p: int(p.name[len("cryptodev") :]))


def open_virtio(arg: str | None) -> Provider:
    if arg:
        return VirtioProvider(arg)
    nodes = find_nodes()
    if not nodes:
        raise UnavailableError(
            "no /dev/cryptodevN node: this is not a guest with the virtio-cryptodev device, "
            "or the module is not loaded (cdev kernel load; cdev nodes create)"
        )
    return VirtioProvider(str(nodes[0]))


@hookimpl
def cdev_register_providers(register: Callable[..., None]) -> None:
    register(VirtioProvider.name, VirtioProvider.description, open_virtio)
