"""The guest initramfs: module closure from modules.dep, the cpio writer, the cache."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from cdev.errors import CdevError
from cdev.vm import initramfs
from cdev.vm.guest_kernel import GuestKernel, check_version, headers_version
from cdev.vm.initramfs import CpioWriter, closure, module_name, parse_modules_dep

VER = "6.1.0-99-amd64"

MODULES_DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/9p/9p.ko: kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/fs/overlayfs/overlay.ko:
kernel/crypto/af_alg.ko:
kernel/crypto/algif_skcipher.ko: kernel/crypto/af_alg.ko
kernel/crypto/algif_hash.ko: kernel/crypto/af_alg.ko
kernel/crypto/crypto_engine.ko:
kernel/drivers/crypto/virtio/virtio_crypto.ko: kernel/crypto/crypto_engine.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/sound/unrelated.ko:
""".replace("\\\n", "")


def fake_kernel(root: Path, dep: str = MODULES_DEP) -> GuestKernel:
    # Any module the guest wants that this sample lacks gets a dependency-free stand-in.
    known = {module_name(p) for p in parse_modules_dep(dep)}
    dep += "".join(f"kernel/extra/{m}.ko:\n" for m in initramfs.GUEST_MODULES if m not in known)
    k = GuestKernel(VER, root)
    k.modules_dir.mkdir(parents=True)
    (k.modules_dir / "modules.dep").write_text(dep)
    (k.modules_dir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    for path in parse_modules_dep(dep):
        ko = k.modules_dir / path
        ko.parent.mkdir(parents=True, exist_ok=True)
        ko.write_bytes(b"\x7fELF fake " + path.encode())
    return k


def test_closure_is_dependencies_first_and_complete() -> None:
    deps = parse_modules_dep(MODULES_DEP)
    order = closure(deps, ["virtio_pci", "9p", "9pnet_virtio", "virtio_crypto"])
    names = [module_name(p) for p in order]
    assert len(names) == len(set(names))
    for mod, needs in deps.items():
        if mod in order:
            for dep in needs:
                assert order.index(dep) < order.index(mod), (dep, mod)
    assert "unrelated" not in names
    assert {"virtio", "virtio_ring", "netfs", "fscache", "crypto_engine"} <= set(names)


def test_module_name_normalises() -> None:
    assert module_name("kernel/net/9p/9pnet_virtio.ko") == "9pnet_virtio"
    assert module_name("a/b/foo-bar.ko.xz") == "foo_bar"


def test_select_modules_reports_missing(tmp_path: Path) -> None:
    k = fake_kernel(tmp_path)
    assert initramfs.select_modules(k, ["ext4", "overlay"]) == ["kernel/fs/overlayfs/overlay.ko"]
    with pytest.raises(CdevError, match="lacks modules: nosuch"):
        initramfs.select_modules(k, ["nosuch"])


def _parse_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_cpio_writer_round_trip() -> None:
    w = CpioWriter()
    w.dir("bin")
    w.file("bin/x", b"abc", 0o755)
    w.symlink("bin/sh", "busybox")
    data = w.finish()
    assert len(data) % 512 == 0
    entries = _parse_newc(data)
    assert entries["bin/x"] == (0o100755, b"abc")
    assert entries["bin/sh"] == (0o120777, b"busybox")
    assert entries["bin"][0] == 0o40755


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool")
def test_initramfs_is_cached_and_readable_by_cpio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDEV_CACHE_DIR", str(tmp_path / "cache"))
    k = fake_kernel(tmp_path / "kernel")
    first = initramfs.ensure_initramfs(k)
    assert first.parent == tmp_path / "cache" / "initramfs"
    assert initramfs.ensure_initramfs(k) == first
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=gzip.decompress(first.read_bytes()), capture_output=True
    )
    assert listing.returncode == 0, listing.stderr
    names = set(listing.stdout.decode().split())
    assert {"init", "bin/busybox", "modules/load-order", "modules/virtio_pci.ko"} <= names
    assert "modules/unrelated.ko" not in names
    entries = _parse_newc(gzip.decompress(first.read_bytes()))
    order = entries["modules/load-order"][1].decode().split()
    assert order.index("virtio.ko") < order.index("virtio_pci.ko")
    assert order.index("af_alg.ko") < order.index("algif_skcipher.ko")
    # Only the closure: a 2 MB archive, not the 400 MB tree.
    assert len(order) == len([n for n in names if n.endswith(".ko")])
    # A module file changing gives a new archive.
    (k.modules_dir / "kernel/fs/overlayfs/overlay.ko").write_bytes(b"\x7fELF changed")
    assert initramfs.ensure_initramfs(k) != first


def test_headers_version_is_derived(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDEV_KERNEL_VERSION", VER)
    assert headers_version() == VER
    monkeypatch.delenv("CDEV_KERNEL_VERSION")
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian system")
    ver = headers_version()
    assert ver.endswith("-amd64") and check_version(ver) == ver
    with pytest.raises(CdevError):
        check_version("../../etc")
