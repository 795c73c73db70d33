"""A small busybox initramfs for the guest: the stock modules it needs, and an /init.

Only the dependency closure of the modules listed in :data:`GUEST_MODULES` is copied
(computed from the guest kernel's ``modules.dep``), in load order, so the archive stays
around 2 MB instead of 400 MB. /init loads them, mounts the host's root read-only over
virtio-9p with a tmpfs overlay on top, mounts the writable exchange share, configures
the network, loads our module and starts the command agent (see :mod:`cdev.vm.guest`)
with the host's own Python, chrooted into the host's filesystem.

The archive is a gzip'ed cpio "newc" written here (no cpio binary needed), byte-for-byte
reproducible, and cached by the hash of its inputs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cdev.errors import CdevError, UnavailableError
from cdev.vm.guest_kernel import GuestKernel, cache_root, locked

# Modules the guest needs; their dependencies are found in modules.dep.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_net",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "overlay",
    "af_alg",
    "algif_skcipher",
    "algif_hash",  # the afalg provider's hashes and HMACs
    "algif_aead",  # ... and its AES-GCM
    # The algorithms of the provider table: the guest cannot autoload them (its modprobe
    # would look in the host root it chroots into). Some are built in; those load nothing.
    "ecb",
    "ctr",
    "xts",
    "gcm",
    "ghash-generic",
    "des_generic",  # des3_ede
    "md5",
    "sha1_generic",
    "sha256_generic",
    "sha512_generic",  # sha384 and sha512
    "hmac",
    "virtio_crypto",
)

BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))

INIT_SCRIPT = r"""#!/bin/busybox sh
# cdev guest init: modules, host root over 9p (read-only) + tmpfs overlay, agent.
/bin/busybox mkdir -p /proc /sys /dev /tmp /newroot /lower /rw /xchg
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { echo "cdev-init: $*" > /dev/kmsg; }
fail() { log "FATAL: $*"; echo "cdev-init: FATAL: $*" > /dev/console; poweroff -f; }
while read -r m; do
    insmod "/modules/$m" 2>/tmp/insmod.err || log "insmod $m: $(cat /tmp/insmod.err)"
done < /modules/load-order
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 cdevxchg /xchg || fail "no exchange share"
[ -r /xchg/.cdev/boot.env ] || fail "no /xchg/.cdev/boot.env"
. /xchg/.cdev/boot.env
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose cdevroot /lower \
    || fail "cannot mount the host root"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
if ! mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot; then
    log "overlay failed; read-only root with tmpfs on the usual writable places"
    mount --bind /lower /newroot
    for d in /tmp /var/tmp /run /root; do mount -t tmpfs tmpfs "/newroot$d"; done
fi
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
# Host paths the guest must see though they sit where it mounts a tmpfs (a project cloned
# under /tmp, say): bind them back from the read-only host root.
IFS=:
for p in $CDEV_HOST_PATHS; do
    case "$p" in
    /tmp/*|/run/*|/dev/shm/*) mkdir -p "/newroot$p" && mount --bind "/lower$p" "/newroot$p" ;;
    esac
done
unset IFS
mkdir -p "/newroot$CDEV_SHARE"
mount --move /xchg "/newroot$CDEV_SHARE"
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
fi
hostname cdev-guest
: > /newroot/tmp/.cdev-module
if [ -n "$CDEV_MODULE" ]; then
    if ! insmod "/newroot$CDEV_MODULE" $CDEV_MODULE_ARGS 2>/newroot/tmp/.cdev-module; then
        log "insmod $CDEV_MODULE failed: $(cat /newroot/tmp/.cdev-module)"
        [ -s /newroot/tmp/.cdev-module ] || echo "insmod failed" > /newroot/tmp/.cdev-module
    fi
fi
# Boot quietly (serial output is slow under TCG), then let every kernel message from the
# tests' time (warnings, oopses, our module's messages) reach console.log.
echo 7 > /proc/sys/kernel/printk
log "starting agent"
chroot /newroot "$CDEV_PYTHON" -I -S "$CDEV_SHARE/.cdev/agent.py" </dev/null
log "agent exited ($?)"
sync
poweroff -f
"""


@dataclass
class ModuleSet:
    """Modules to copy, in load order (dependencies first), relative to the module tree."""

    order: list[str] = field(default_factory=list)


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """``modules.dep`` as {path: [dependency paths]} (paths relative to the module tree)."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        deps[mod.strip()] = rest.split()
    return deps


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for ext in (".ko.zst", ".ko.xz", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return base.replace("-", "_")


def closure(deps: dict[str, list[str]], wanted: Iterable[str]) -> list[str]:
    """The wanted modules and everything they depend on, dependencies first."""
    by_name = {module_name(p): p for p in deps}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in seen:
            return
        if path in stack:
            raise CdevError(f"dependency cycle in modules.dep at {path}")
        # modules.dep lists the full closure, nearest last; visit each so order holds anyway.
        for dep in reversed(deps.get(path, [])):
            visit(dep, (*stack, path))
        seen.add(path)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            continue  # built in (modules.builtin) or absent from this kernel: nothing to load
        visit(path, ())
    return order


def builtin_modules(kernel: GuestKernel) -> set[str]:
    f = kernel.modules_dir / "modules.builtin"
    if not f.is_file():
        return set()
    return {module_name(line.strip()) for line in f.read_text().splitlines() if line.strip()}


def select_modules(kernel: GuestKernel, wanted: Sequence[str] = GUEST_MODULES) -> list[str]:
    dep_file = kernel.modules_dir / "modules.dep"
    if not dep_file.is_file():
        raise CdevError(f"{dep_file} missing (run depmod)")
    deps = parse_modules_dep(dep_file.read_text())
    builtin = builtin_modules(kernel)
    names = {module_name(p) for p in deps}
    missing = [w for w in wanted if w.replace("-", "_") not in names | builtin]
    if missing:
        raise CdevError(f"guest kernel {kernel.version} lacks modules: {', '.join(missing)}")
    return closure(deps, wanted)


class CpioWriter:
    """A minimal cpio "newc" writer (the format the kernel unpacks), reproducible."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name_b), 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.buf.write(header + name_b)
        self.buf.write(b"\0" * (-(110 + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def find_busybox() -> Path:
    for cand in BUSYBOX_CANDIDATES:
        if cand.is_file():
            return cand
    found = shutil.which("busybox")
    if found:
        return Path(found)
    raise UnavailableError("busybox not found: apt-get install busybox-static")


def _check_static(busybox: Path) -> None:
    with busybox.open("rb") as f:
        head = f.read(1 << 16)
    if b"/lib64/ld-linux" in head or b"ld-linux-x86-64" in head:
        raise UnavailableError(f"{busybox} is dynamically linked: apt-get install busybox-static")


def build_archive(
    kernel: GuestKernel, modules: Sequence[str], busybox: Path, extra: Sequence[Path] = ()
) -> bytes:
    """The uncompressed cpio archive: busybox, /init, modules + their load order."""
    w = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "tmp", "newroot", "lower", "rw", "xchg", "modules"):
        w.dir(d)
    w.file("bin/busybox", busybox.read_bytes(), 0o755)
    w.symlink("bin/sh", "busybox")
    w.file("init", INIT_SCRIPT.encode(), 0o755)
    names: list[str] = []
    for rel in modules:
        src = kernel.modules_dir / rel
        name = rel.rsplit("/", 1)[-1]
        w.file(f"modules/{name}", src.read_bytes())
        names.append(name)
    for ko in extra:
        w.file(f"modules/{ko.name}", ko.read_bytes())
        names.append(ko.name)
    w.file("modules/load-order", ("\n".join(names) + "\n").encode())
    return w.finish()


def initramfs_dir() -> Path:
    return cache_root() / "initramfs"


def ensure_initramfs(
    kernel: GuestKernel,
    extra_modules: Sequence[Path] = (),
    wanted: Sequence[str] = GUEST_MODULES,
) -> Path:
    """Return a cached ``initramfs-<hash>.cpio.gz`` for this kernel and these modules.

    ``extra_modules`` are .ko files appended to the load order (loaded at boot, before
    the host root is mounted); the harness normally loads our module from its build
    directory through the host share instead, so a rebuild does not change the archive.
    """
    busybox = find_busybox()
    _check_static(busybox)
    modules = select_modules(kernel, wanted)
    h = hashlib.sha256()
    h.update(INIT_SCRIPT.encode())
    h.update(kernel.version.encode())
    h.update(hashlib.sha256(busybox.read_bytes()).digest())
    for rel in modules:
        h.update(rel.encode() + b"\0")
        st = (kernel.modules_dir / rel).stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    for ko in extra_modules:
        h.update(hashlib.sha256(ko.read_bytes()).digest())
    out = initramfs_dir() / f"initramfs-{kernel.version}-{h.hexdigest()[:16]}.cpio.gz"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.parent / ".lock"):
        if out.is_file():
            return out
        data = build_archive(kernel, modules, busybox, extra_modules)
        tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
        tmp.replace(out)
    return out
