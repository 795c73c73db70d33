"""Which QEMU binary, which firmware, which devices it has."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from cdev.errors import UnavailableError

ProgressFn = Callable[[str, float | None], None]

QEMU_ENV = "CDEV_QEMU"
CRYPTODEV_DEVICE = "virtio-cryptodev-pci"

# Upstream paravirtual crypto, for side-by-side runs: Guest(extra_args=UPSTREAM_VIRTIO_CRYPTO).
UPSTREAM_VIRTIO_CRYPTO: tuple[str, ...] = (
    "-object",
    "cryptodev-backend-builtin,id=cdevupstream0",
    "-device",
    "virtio-crypto-pci,id=crypto0,cryptodev=cdevupstream0",
)


def resolve_qemu(qemu: Path | str | None = None, progress: ProgressFn | None = None) -> Path:
    """The QEMU binary: explicit path, ``$CDEV_QEMU``, or our build (``ensure_qemu()``)."""
    chosen = qemu or os.environ.get(QEMU_ENV)
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            found = shutil.which(str(chosen))
            if not found:
                raise UnavailableError(f"QEMU binary not found: {chosen}")
            path = Path(found)
        return path.resolve()
    from cdev.vm import qemu_build

    return qemu_build.ensure_qemu(progress)


def firmware_dirs() -> list[Path]:
    from cdev.vm import qemu_build

    return list(qemu_build.firmware_dirs())


_device_cache: dict[tuple[str, int], str] = {}


def qemu_devices(qemu: Path) -> str:
    """``qemu -device help`` output (cached per binary and mtime)."""
    key = (str(qemu), qemu.stat().st_mtime_ns)
    if key not in _device_cache:
        try:
            proc = subprocess.run(
                [str(qemu), "-nodefaults", "-machine", "none", "-device", "help"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UnavailableError(f"cannot run {qemu}: {exc}") from None
        _device_cache[key] = proc.stdout + proc.stderr
    return _device_cache[key]


def supports_device(qemu: Path, device: str) -> bool:
    return f'name "{device}"' in qemu_devices(qemu)
