"""Does KVM really work here? ``/dev/kvm`` existing is not enough.

On some hosts (nested virtualization) ``/dev/kvm`` opens fine but a guest hangs forever
at "Booting from ROM". So the probe boots the real guest kernel under KVM without an
initramfs and waits a few seconds for it to reach its own "Kernel panic" (no root fs): if
it gets there, KVM works. The answer is cached per QEMU version, guest kernel and host
kernel in ``${CDEV_CACHE_DIR:-/var/cache/cdev}/kvm-probe.json``; ``CDEV_ACCEL=kvm|tcg``
skips the probe.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cdev.vm.guest_kernel import GuestKernel, ProgressFn, cache_root

PROBE_TIMEOUT = 15.0
_SUCCESS = (b"Kernel panic", b"VFS: Unable to mount root")


def cache_file() -> Path:
    return cache_root() / "kvm-probe.json"


def _qemu_version(qemu: Path) -> str:
    try:
        proc = subprocess.run(
            [str(qemu), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"{qemu}:{qemu.stat().st_mtime_ns}"
    return (proc.stdout.strip().splitlines() or [str(qemu)])[0]


def _key(qemu: Path, kernel: GuestKernel) -> str:
    # Whether KVM works depends on the host and the QEMU version, not on which rebuild of
    # our device this binary is: a rebuild must not cost another 15 s probe.
    return f"{_qemu_version(qemu)}|{kernel.version}|{os.uname().release}"


def kvm_device_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def probe(
    qemu: Path,
    kernel: GuestKernel,
    firmware: Sequence[Path] = (),
    timeout: float = PROBE_TIMEOUT,
) -> tuple[bool, str | None]:
    """Boot the guest kernel under KVM: (works, why); why is None when QEMU itself failed
    for another reason (missing firmware...), an answer not worth caching."""
    if not kvm_device_usable():
        return False, "/dev/kvm missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="cdev-kvm-") as tmp:
        log = Path(tmp) / "console.log"
        argv = [str(qemu)]
        for d in firmware:
            argv += ["-L", str(d)]
        argv += [
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "pc", "-accel", "kvm", "-cpu", "host", "-m", "256",
            "-kernel", str(kernel.vmlinuz),
            "-append", "console=ttyS0 panic=-1 loglevel=4",
            "-chardev", f"file,id=c0,path={log}", "-serial", "chardev:c0",
        ]  # fmt: skip
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            return False, f"cannot run {qemu}: {exc.strerror}"
        deadline = time.monotonic() + timeout
        ok = False
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if any(s in log.read_bytes() for s in _SUCCESS):
                        ok = True
                        break
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0] or b""
        if ok:
            return True, "guest kernel booted under KVM"
        text = out.decode(errors="replace").strip()
        if proc.returncode not in (None, 0, -9) and "kvm" not in text.lower():
            return False, None
        if text:
            return False, f"QEMU: {text.splitlines()[0]}"
        return False, f"guest kernel did not boot under KVM within {timeout:.0f} s"


def kvm_works(
    qemu: Path,
    kernel: GuestKernel,
    progress: ProgressFn | None = None,
    *,
    firmware: Sequence[Path] = (),
    refresh: bool = False,
) -> tuple[bool, str]:
    """Cached :func:`probe`."""
    key = _key(qemu, kernel)
    cache: dict[str, list[object]] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(cache_file().read_text())
    if not refresh and key in cache:
        works, why = cache[key]
        return bool(works), str(why)
    if progress:
        progress("probing KVM", None)
    works, why = probe(qemu, kernel, firmware)
    if why is None:
        return False, "QEMU failed to start the probe"
    cache[key] = [works, why]
    with contextlib.suppress(OSError):
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file().with_name(f".kvm-probe.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=2) + "\n")
        tmp.replace(cache_file())
    return works, why


def choose_accel(
    qemu: Path,
    kernel: GuestKernel,
    progress: ProgressFn | None = None,
    firmware: Sequence[Path] = (),
) -> str:
    """Return "kvm" if it really works here, else "tcg"."""
    if not kvm_device_usable():
        return "tcg"
    return "kvm" if kvm_works(qemu, kernel, progress, firmware=firmware)[0] else "tcg"
