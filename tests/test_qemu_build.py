"""The QEMU build: the idempotent overlay, the content-keyed cache, the real binary."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cdev.vm import qemu_build

# The lines of QEMU 7.2's own files that apply_backend() anchors on.
FAKE_TREE = {
    "hw/virtio/virtio.c": (
        'const char *virtio_device_names[] = {\n    [VIRTIO_ID_GPIO] = "virtio-gpio"\n};\n'
    ),
    "hw/virtio/meson.build": (
        "virtio_pci_ss = ss.source_set()\n"
        "virtio_ss.add_all(when: 'CONFIG_VIRTIO_PCI', if_true: virtio_pci_ss)\n"
    ),
    "hw/virtio/Kconfig": "config VIRTIO\n    bool\n",
    "hw/virtio/trace-events": "# virtio.c\n",
    "meson.build": "    unpack_edk2_blobs = bzip2.found()\n",
}


def fake_tree(root: Path) -> Path:
    for rel, text in FAKE_TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_apply_backend_is_idempotent(tmp_path: Path) -> None:
    src = fake_tree(tmp_path)
    first = qemu_build.apply_backend(src)
    assert "hw/virtio/virtio-cryptodev.c" in first
    assert "include/hw/virtio/virtio_cryptodev.h" in first
    assert {"hw/virtio/meson.build", "hw/virtio/Kconfig", "hw/virtio/trace-events"} <= set(first)
    snapshot = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert qemu_build.apply_backend(src) == []
    assert snapshot == {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    meson = (src / "hw/virtio/meson.build").read_text()
    # Our sources join the PCI source set before it is folded into virtio_ss.
    assert meson.index("virtio-cryptodev-pci.c") < meson.index("add_all")
    assert "unpack_edk2_blobs = false" in (src / "meson.build").read_text()
    # The protocol header is the frontend's very file, not a second copy.
    header = (src / "include/hw/virtio/virtio_cryptodev.h").read_bytes()
    assert header == qemu_build.protocol_header().read_bytes()


def test_apply_backend_rejects_other_trees(tmp_path: Path) -> None:
    with pytest.raises(qemu_build.CdevError, match="QEMU source tree"):
        qemu_build.apply_backend(tmp_path)
    fake_tree(tmp_path)
    (tmp_path / "hw/virtio/meson.build").write_text("nothing to anchor on\n")
    with pytest.raises(qemu_build.CdevError, match="expected line"):
        qemu_build.apply_backend(tmp_path)


def test_no_second_copy_of_the_protocol_in_git() -> None:
    files = [p.name for p in qemu_build.backend_files()]
    assert "virtio_cryptodev.h" not in files


def test_cache_key_follows_the_inputs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    flags = qemu_build.configure_flags()
    key = qemu_build.cache_key("debian:qemu:1", flags)
    assert key == qemu_build.cache_key("debian:qemu:1", flags)
    assert key != qemu_build.cache_key("debian:qemu:2", flags)
    assert key != qemu_build.cache_key("debian:qemu:1", qemu_build.configure_flags(True))
    header = tmp_path / "virtio_cryptodev.h"
    header.write_bytes(qemu_build.protocol_header().read_bytes() + b"\n")
    monkeypatch.setattr(qemu_build, "protocol_header", lambda: header)
    monkeypatch.setattr(qemu_build, "repo_root", lambda: Path("/"))
    assert qemu_build.cache_key("debian:qemu:1", flags) != key


def test_cache_key_ignores_what_the_build_does_not_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "qemu"
    for name in (
        "overlay/hw/virtio/dev.c",
        "integration/meson.build.in",
        "README.md",
        "../kernel/virtio_cryptodev.h",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("one\n")
    monkeypatch.setattr(qemu_build, "backend_dir", lambda: root)
    monkeypatch.setattr(qemu_build, "repo_root", lambda: tmp_path)
    flags = qemu_build.configure_flags()
    key = qemu_build.cache_key("debian:qemu:1", flags)
    (root / "README.md").write_text("two\n")
    (root / "build-x86").mkdir()
    (root / "build-x86" / "config.h").write_text("generated\n")
    assert qemu_build.cache_key("debian:qemu:1", flags) == key
    for name in ("overlay/hw/virtio/dev.c", "integration/meson.build.in"):
        before = qemu_build.cache_key("debian:qemu:1", flags)
        (root / name).write_text("changed\n")
        assert qemu_build.cache_key("debian:qemu:1", flags) != before, name


def test_firmware_dirs_exist() -> None:
    dirs = qemu_build.firmware_dirs()
    assert all(d.is_dir() for d in dirs)
    assert any((d / "bios-256k.bin").exists() for d in dirs), "install seabios"


def test_bad_qemu_src_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(qemu_build.CdevError, match="not a QEMU source tree"):
        qemu_build.ensure_qemu(qemu_src=tmp_path)


@pytest.mark.vm
def test_real_build_has_the_device_and_is_cached() -> None:
    binary = qemu_build.ensure_qemu()
    assert binary.is_file()
    out = subprocess.run(
        [str(binary), "-device", "help"], capture_output=True, text=True, check=True
    ).stdout
    assert '"virtio-cryptodev-pci"' in out
    props = subprocess.run(
        [str(binary), "-device", "virtio-cryptodev-pci,help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "engine=" in props
    t0 = time.monotonic()
    assert qemu_build.ensure_qemu() == binary
    assert time.monotonic() - t0 < 5, "an unchanged second run must come from the cache"
    assert qemu_build.latest_binary() == binary
    assert shutil.which("ninja")
    from typer.testing import CliRunner

    from cdev.cli import build_app

    for argv in (["qemu", "build"], ["qemu", "path"]):
        result = CliRunner().invoke(build_app(), argv)
        assert result.exit_code == 0 and result.stdout.strip() == str(binary)


@pytest.mark.vm
def test_device_sources_pass_qemu_checkpatch() -> None:
    qemu_build.ensure_qemu()
    trees = sorted(qemu_build.cache_dir().glob("work/*/src/scripts/checkpatch.pl"))
    assert trees, "no QEMU tree in the cache"
    overlay = qemu_build.backend_dir() / "overlay"
    files = sorted(str(p) for p in overlay.rglob("*.[ch]"))
    result = subprocess.run(
        ["perl", str(trees[0]), "--no-tree", "--terse", "-f", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_failed_build_is_one_line_with_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cdev.cli import build_app

    src = fake_tree(tmp_path / "qemu-src")
    (src / "VERSION").write_text("7.2.0\n")
    configure = src / "configure"
    configure.write_text("#!/bin/sh\necho 'ERROR: no compiler today' >&2\nexit 1\n")
    configure.chmod(0o755)
    monkeypatch.setenv(qemu_build.CACHE_ENV, str(tmp_path / "cache"))
    result = CliRunner().invoke(build_app(), ["qemu", "build", "--qemu-src", str(src)])
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("cdev:")]
    assert len(lines) == 1 and "configure" in lines[0] and "log: " in lines[0]
    log = Path(lines[0].split("log: ", 1)[1])
    assert "no compiler today" in log.read_text()
    # The overlay was applied to the copy, never to the user's tree.
    assert not (src / "hw/virtio/virtio-cryptodev.c").exists()


def test_qemu_path_without_a_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cdev.cli import build_app

    monkeypatch.setenv(qemu_build.CACHE_ENV, str(tmp_path))
    result = CliRunner().invoke(build_app(), ["qemu", "path"])
    assert result.exit_code == 2 and "cdev qemu build" in result.stderr


def test_integration_blocks_follow_their_source(tmp_path: Path) -> None:
    f = tmp_path / "trace-events"
    f.write_text('# upstream\nfoo(void) ""\n')
    assert qemu_build._sync_block(f, None, 'one(void) ""\n')
    assert not qemu_build._sync_block(f, None, 'one(void) ""\n')
    assert qemu_build._sync_block(f, None, 'one(void) ""\ntwo(void) ""\n')
    text = f.read_text()
    assert text.count(qemu_build.BLOCK_BEGIN) == 1 and "two(void)" in text
    assert text.startswith("# upstream\nfoo(void)")
