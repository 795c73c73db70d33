"""Build Debian's QEMU 7.2 with the in-tree ``virtio-cryptodev`` device, cached by content.

Public API (used by ``cdev qemu build`` and the VM harness)::

    ensure_qemu(progress=None, *, qemu_src=None, force=False, sanitizers=False) -> Path
    firmware_dirs() -> list[Path]      # pass each as ``-L DIR`` to the binary

Layout under ``${CDEV_CACHE_DIR:-/var/cache/cdev}/qemu/``:

- ``src-dl/``                 Debian source package files fetched by ``apt-get source``
- ``work/<tree>/src/``        an unpacked QEMU tree with ``qemu/`` applied and ``build/`` in it;
                              one per (source, configure flags), reused so ninja is incremental
- ``<key>/qemu-system-x86_64``  the finished binary; ``key`` is a sha256 over the content of
                              ``qemu/**``, ``kernel/virtio_cryptodev.h``, the source version and the
                              configure flags, so an unchanged second run returns at once

The device sources are applied by :func:`apply_backend`, which is idempotent: files are
copied only when their content differs (ninja then rebuilds only what changed) and every
line added to QEMU's own files sits behind a marker that is checked first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cdev.errors import CdevError, UnavailableError, UsageError

# description, fraction done (None when unknown)
ProgressFn = Callable[[str, float | None], None]

BINARY_NAME = "qemu-system-x86_64"
CACHE_ENV = "CDEV_CACHE_DIR"
DEFAULT_CACHE = "/var/cache/cdev"
MARKER = "virtio-cryptodev"  # tags every line we add to QEMU's own files

# The minimal configure line for one x86_64 system emulator; GnuTLS is forced so that
# qcrypto uses AES-NI rather than QEMU's table-based fallback.
CONFIGURE_FLAGS: tuple[str, ...] = (
    "--target-list=x86_64-softmmu",
    "--disable-docs",
    "--disable-werror",
    "--enable-slirp",
    "--enable-virtfs",
    "--disable-tools",
    "--disable-gtk",
    "--disable-sdl",
    "--disable-vnc",
    "--disable-opengl",
    "--disable-spice",
    "--disable-xen",
    "--disable-guest-agent",
    "--disable-install-blobs",
    "--enable-gnutls",
    "--disable-nettle",
    "--disable-gcrypt",
    "--enable-fdt=system",
    "--enable-trace-backends=log",
)
SANITIZER_FLAGS: tuple[str, ...] = ("--enable-sanitizers", "--enable-debug-info")

DEB_SRC_FILE = Path("/etc/apt/sources.list.d/cdev-deb-src.sources")
DEB_SRC_CONTENT = """\
# Written by `cdev qemu build`: Debian source packages, to build Debian's QEMU with our device.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

# Debian's firmware packages: seabios (bios-256k.bin, vgabios), qemu-system-data
# (linuxboot_dma.bin, kvmvapic.bin, keymaps), ipxe-qemu (NIC option ROMs).
FIRMWARE_DIRS = (Path("/usr/share/seabios"), Path("/usr/share/qemu"), Path("/usr/lib/ipxe/qemu"))

# Our sources must join virtio_pci_ss before it is folded into virtio_ss.
MESON_ANCHOR = "virtio_ss.add_all(when: 'CONFIG_VIRTIO_PCI', if_true: virtio_pci_ss)"
_NINJA_STEP = re.compile(rb"^\[(\d+)/(\d+)\]")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def backend_dir() -> Path:
    return repo_root() / "qemu"


def protocol_header() -> Path:
    return repo_root() / "kernel" / "virtio_cryptodev.h"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE) / "qemu"


def firmware_dirs() -> list[Path]:
    """Debian's firmware directories that exist here, in ``-L`` order."""
    return [d for d in FIRMWARE_DIRS if d.is_dir()]


def configure_flags(sanitizers: bool = False) -> tuple[str, ...]:
    return CONFIGURE_FLAGS + (SANITIZER_FLAGS if sanitizers else ())


# The parts of ``qemu/`` that `apply_backend` copies into QEMU's tree: only these (and the
# protocol header) key the cache, so editing qemu/README.md does not rebuild QEMU.
BUILD_INPUT_DIRS = ("overlay", "integration")


def backend_files() -> list[Path]:
    """Every file of ``qemu/`` that goes into the build, sorted (the cache key's inputs)."""
    root = backend_dir()
    files = [
        p
        for sub in BUILD_INPUT_DIRS
        for p in (root / sub).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    return sorted(files)


def cache_key(source_id: str, flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    root = repo_root()
    for path in [*backend_files(), protocol_header()]:
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(b"source\0" + source_id.encode() + b"\0")
    h.update(b"flags\0" + "\0".join(flags).encode())
    return h.hexdigest()[:24]


# ---------------------------------------------------------------- applying qemu/


def _write_if_changed(dest: Path, data: bytes) -> bool:
    if dest.exists() and dest.read_bytes() == data:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".cdev-tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return True


def _add_lines(path: Path, anchor: str | None, block: str, *, after: bool = True) -> bool:
    """Insert ``block`` (which must contain MARKER) next to the line ``anchor``, once."""
    text = path.read_text()
    if MARKER in text:
        return False
    if anchor is None:
        new = text.rstrip("\n") + "\n" + block
    else:
        if anchor not in text:
            raise CdevError(f"cannot apply qemu/ to {path}: expected line {anchor!r} not found")
        repl = anchor + "\n" + block.rstrip("\n") if after else block.rstrip("\n") + "\n" + anchor
        new = text.replace(anchor, repl, 1)
    path.write_text(new)
    return True


BLOCK_BEGIN = f"# >>> {MARKER} (added by cdev qemu build; edit qemu/integration/ instead)"
BLOCK_END = f"# <<< {MARKER}"


def _sync_block(path: Path, anchor: str | None, body: str) -> bool:
    """Keep one marked block of ``body`` in a '#'-commented file, before ``anchor``
    (or at the end); rewrite it only when ``body`` changed."""
    block = f"{BLOCK_BEGIN}\n{body.strip(chr(10))}\n{BLOCK_END}\n"
    text = path.read_text()
    start = text.find(BLOCK_BEGIN)
    if start >= 0:
        end = text.find(BLOCK_END, start)
        if end < 0:
            raise CdevError(f"{path}: unterminated {MARKER} block; restore the file")
        end = text.find("\n", end) + 1 or len(text)
        if text[start:end] == block:
            return False
        new = text[:start] + block + text[end:]
    elif anchor is None:
        new = text.rstrip("\n") + "\n\n" + block
    else:
        if anchor not in text:
            raise CdevError(f"cannot apply qemu/ to {path}: expected line {anchor!r} not found")
        new = text.replace(anchor, block + anchor, 1)
    path.write_text(new)
    return True


def apply_backend(src: Path) -> list[str]:
    """Apply ``qemu/`` onto the QEMU source tree ``src``; idempotent. Returns what changed."""
    if not (src / "hw" / "virtio" / "virtio.c").is_file():
        raise CdevError(f"{src} does not look like a QEMU source tree (no hw/virtio/virtio.c)")
    changed: list[str] = []
    overlay = backend_dir() / "overlay"
    for f in sorted(overlay.rglob("*")):
        if f.is_file():
            rel = f.relative_to(overlay)
            if _write_if_changed(src / rel, f.read_bytes()):
                changed.append(str(rel))
    # The wire protocol is the frontend's header, copied at build time, never kept twice.
    hdr = Path("include/hw/virtio/virtio_cryptodev.h")
    if _write_if_changed(src / hdr, protocol_header().read_bytes()):
        changed.append(str(hdr))

    integ = backend_dir() / "integration"
    blocks = (
        ("hw/virtio/meson.build", "meson.build.in", MESON_ANCHOR),
        ("hw/virtio/Kconfig", "Kconfig.in", None),
        ("hw/virtio/trace-events", "trace-events.in", None),
    )
    for target, name, anchor in blocks:
        if _sync_block(src / target, anchor, (integ / name).read_text()):
            changed.append(target)
    # virtio_init() asserts that every device id has a name in this table.
    if _add_lines(
        src / "hw/virtio/virtio.c",
        '    [VIRTIO_ID_GPIO] = "virtio-gpio"',
        '    ,[63] = "virtio-cryptodev" /* VIRTIO_ID_CRYPTODEV, virtio-cryptodev */',
    ):
        changed.append("hw/virtio/virtio.c")
    # The dfsg tarball has no edk2 blobs: never try to unpack them, bzip2 or not.
    top = src / "meson.build"
    text = top.read_text()
    old = "    unpack_edk2_blobs = bzip2.found()"
    if old in text:
        top.write_text(text.replace(old, "    unpack_edk2_blobs = false  # virtio-cryptodev: dfsg"))
        changed.append("meson.build")
    return changed


# ---------------------------------------------------------------- running steps


class _Runner:
    def __init__(self, log: Path, progress: ProgressFn | None) -> None:
        self.log = log
        self.progress = progress

    def say(self, text: str, fraction: float | None = None) -> None:
        with self.log.open("a") as f:
            f.write(f"=== {time.strftime('%H:%M:%S')} {text}\n")
        if self.progress:
            self.progress(text, fraction)

    def run(self, step: str, argv: list[str], cwd: Path | None = None) -> None:
        self.say(step)
        with self.log.open("ab") as f:
            f.write(("$ " + " ".join(argv) + "\n").encode())
            f.flush()
            try:
                proc = subprocess.Popen(
                    argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                )
            except OSError as exc:
                raise UnavailableError(f"{step}: cannot run {argv[0]}: {exc.strerror}") from None
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                m = _NINJA_STEP.match(line)
                if m and self.progress:
                    done, total = int(m.group(1)), int(m.group(2))
                    self.progress(f"{step} {done}/{total}", done / max(total, 1))
            rc = proc.wait()
        if rc != 0:
            raise CdevError(f"QEMU build failed: {step} (exit {rc}); log: {self.log}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _apt_candidate() -> tuple[str, str] | None:
    """(dsc file name, version) that ``apt-get source qemu`` would fetch, if apt knows one."""
    try:
        out = subprocess.run(
            ["apt-get", "source", "--print-uris", "-qq", "qemu"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].endswith(".dsc"):
            dsc = parts[1]
            return dsc, dsc[len("qemu_") : -len(".dsc")]
    return None


def ensure_deb_src(runner: _Runner | None = None) -> None:
    """Make apt know bookworm's source packages (root only)."""
    if _apt_candidate() is not None:
        return
    if os.geteuid() != 0:
        raise UnavailableError(
            "no deb-src entry for bookworm and not root: run `cdev qemu build` as root "
            "or pass --qemu-src DIR"
        )
    if not DEB_SRC_FILE.exists():
        DEB_SRC_FILE.write_text(DEB_SRC_CONTENT)
    if runner:
        runner.run("apt-get update", ["apt-get", "update", "-qq"])
    else:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
    if _apt_candidate() is None:
        raise UnavailableError("apt has no source package for qemu even with deb-src enabled")


def _local_source_id(src: Path) -> str:
    version = (src / "VERSION").read_text().strip() if (src / "VERSION").exists() else "?"
    changelog = src / "debian" / "changelog"
    head = changelog.read_text().splitlines()[0] if changelog.exists() else ""
    return f"local:{src.resolve()}:{version}:{head}"


def _unpack_debian_source(dsc: str, dest: Path, runner: _Runner) -> None:
    dl = cache_dir() / "src-dl"
    dl.mkdir(parents=True, exist_ok=True)
    if not (dl / dsc).exists():
        runner.run("apt-get source qemu (download)", ["apt-get", "source", "-d", "qemu"], cwd=dl)
    tmp = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    runner.run("unpack Debian source", ["dpkg-source", "-x", str(dl / dsc), str(tmp)])
    tmp.rename(dest)


def _copy_local_source(src: Path, dest: Path, runner: _Runner) -> None:
    runner.say(f"copy {src}")
    tmp = dest.with_name(dest.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, symlinks=True, ignore=shutil.ignore_patterns("build", ".git"))
    tmp.rename(dest)


def built_binary(key: str) -> Path:
    return cache_dir() / key / BINARY_NAME


def ensure_qemu(
    progress: ProgressFn | None = None,
    *,
    qemu_src: Path | None = None,
    force: bool = False,
    sanitizers: bool = False,
) -> Path:
    """Return a QEMU binary with our device, building it first when the inputs changed."""
    flags = configure_flags(sanitizers)
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnavailableError(f"cannot create {cache}: {exc.strerror}; set {CACHE_ENV}") from None
    if qemu_src is not None:
        qemu_src = qemu_src.resolve()
        if not (qemu_src / "configure").is_file():
            raise UsageError(f"{qemu_src} is not a QEMU source tree (no configure)")
    if qemu_src is not None:
        source_id = _local_source_id(qemu_src)
        dsc = None
    else:
        cand = _apt_candidate()
        if cand is None:
            ensure_deb_src()
            cand = _apt_candidate()
        assert cand is not None
        dsc, version = cand
        source_id = f"debian:qemu:{version}"
    key = cache_key(source_id, flags)
    out = built_binary(key)
    if out.exists() and not force:
        if progress:
            progress(f"QEMU up to date ({key})", 1.0)
        with contextlib.suppress(OSError):
            os.utime(out)  # `cdev qemu path` names the binary ensured last
        return out
    tree_id = hashlib.sha256((source_id + "\0" + "\0".join(flags)).encode()).hexdigest()[:16]
    # One build per work tree at a time; a second caller waits, then finds the result.
    with _locked(cache / "work" / f"{tree_id}.lock"):
        if out.exists() and not force:
            return out
        work = cache / "work" / tree_id
        work.mkdir(parents=True, exist_ok=True)
        log = work / "build.log"
        log.write_text(f"cdev qemu build: key {key}, source {source_id}\n")
        runner = _Runner(log, progress)
        src = work / "src"
        if force and src.exists():
            shutil.rmtree(src)
        if not src.exists():
            if dsc is None:
                assert qemu_src is not None
                _copy_local_source(qemu_src, src, runner)
            else:
                _unpack_debian_source(dsc, src, runner)
        changed = apply_backend(src)
        runner.say("applied qemu/: " + (", ".join(changed) or "no changes"))
        build = src / "build"
        stamp = build / ".cdev-configure"
        want = "\n".join(flags)
        if not stamp.exists() or stamp.read_text() != want:
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir()
            runner.run("configure", ["../configure", *flags], cwd=build)
            stamp.write_text(want)
        runner.run("ninja", ["ninja", "-j2", BINARY_NAME], cwd=build)

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        shutil.copy2(build / BINARY_NAME, tmp)
        tmp.replace(out)
        info = {"key": key, "source": source_id, "flags": list(flags), "log": str(log)}
        (out.parent / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
        _prune(flags, keep=out.parent)
        runner.say(f"built {out}", 1.0)
        return out


def _prune(flags: tuple[str, ...], keep: Path, max_kept: int = 3) -> None:
    """Drop all but the newest few binaries built with these flags (60-100 MB each)."""
    same: list[tuple[float, Path]] = []
    for info in cache_dir().glob("*/build-info.json"):
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        if data.get("flags") == list(flags) and info.parent != keep:
            same.append((info.stat().st_mtime, info.parent))
    for _, old in sorted(same, reverse=True)[max_kept - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def latest_binary(sanitizers: bool = False) -> Path | None:
    """The most recently built binary for these flags, without touching apt or the sources."""
    want = list(configure_flags(sanitizers))
    best: tuple[float, Path] | None = None
    for info in cache_dir().glob("*/build-info.json"):
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        binary = info.parent / BINARY_NAME
        if data.get("flags") == want and binary.exists():
            mtime = binary.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, binary)
    return best[1] if best else None
