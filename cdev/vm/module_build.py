"""Build the guest frontend module (``kernel/``) against the guest kernel's headers.

kbuild writes its objects next to the sources of an external module (``M=``), and Linux
6.1 has no separate output directory for them, so the sources are copied into a build
directory outside the clone — ``${CDEV_CACHE_DIR:-/var/cache/cdev}/module/VER/<hash>`` —
keyed by the content of ``kernel/`` and the headers' version. A second build with the same
inputs is free; ``kernel/`` itself stays clean.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cdev.errors import CdevError, UnavailableError
from cdev.vm.guest_kernel import (
    ProgressFn,
    cache_root,
    check_version,
    headers_dir,
    headers_version,
    locked,
)

MODULE_NAME = "virtio_cryptodev"
MODULE_FILE = f"{MODULE_NAME}.ko"
# Build products kbuild leaves in the source directory; never part of the inputs.
_ARTIFACT_SUFFIXES = (".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order", ".a", ".dwo")


def source_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "kernel"


def _is_artifact(name: str) -> bool:
    return (
        name.startswith(".")
        or name.endswith(_ARTIFACT_SUFFIXES)
        or name in ("modules.order", "Module.symvers")
    )


def source_files(src: Path | None = None) -> list[Path]:
    src = src or source_dir()
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and not any(_is_artifact(p) for p in rel.parts):
            files.append(path)
    return files


def source_hash(version: str, src: Path | None = None) -> str:
    src = src or source_dir()
    h = hashlib.sha256(f"{version}\0".encode())
    for f in source_files(src):
        h.update(str(f.relative_to(src)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def build_root(version: str) -> Path:
    return cache_root() / "module" / version


def built_module(version: str | None = None) -> Path | None:
    """The module built from the current ``kernel/`` sources, if it exists."""
    version = check_version(version or headers_version())
    src = source_dir()
    if not src.is_dir():
        return None
    ko = build_root(version) / source_hash(version, src) / MODULE_FILE
    return ko if ko.is_file() else None


def latest_module(version: str | None = None) -> Path | None:
    """The most recent build for ``version``, even if ``kernel/`` changed since."""
    version = check_version(version or headers_version())
    kos = [p for p in build_root(version).glob(f"*/{MODULE_FILE}") if p.is_file()]
    return max(kos, key=lambda p: p.stat().st_mtime) if kos else None


def ensure_module(
    version: str | None = None,
    progress: ProgressFn | None = None,
    *,
    force: bool = False,
    jobs: int = 2,
) -> Path:
    """Build ``kernel/`` for ``version`` (default: the headers' ABI) unless already built."""
    version = check_version(version or headers_version())
    src = source_dir()
    if not src.is_dir() or not any((src / n).is_file() for n in ("Kbuild", "Makefile")):
        raise UnavailableError(f"no module sources: {src} has no Kbuild or Makefile")
    kdir = headers_dir(version)
    if shutil.which("make") is None:
        raise UnavailableError("make not found: apt-get install make")
    key = source_hash(version, src)
    out = build_root(version) / key
    ko = out / MODULE_FILE
    if ko.is_file() and not force:
        return ko
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnavailableError(f"cannot create {out.parent}: {exc.strerror}") from None
    with locked(out.parent / ".lock"):
        if ko.is_file() and not force:
            return ko
        if progress:
            progress(f"building {MODULE_FILE} for {version}", None)
        with tempfile.TemporaryDirectory(prefix=f".{key}-", dir=out.parent) as tmp:
            work = Path(tmp) / "kernel"
            work.mkdir()
            for f in source_files(src):
                dest = work / f.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
            argv = ["make", f"-j{jobs}", "-C", str(kdir), f"M={work}", "modules"]
            try:
                proc = subprocess.run(
                    argv, capture_output=True, text=True, check=False, env=_make_env()
                )
            except OSError as exc:
                raise UnavailableError(f"cannot run make: {exc.strerror}") from None
            log = proc.stdout + proc.stderr
            if proc.returncode != 0 or not (work / MODULE_FILE).is_file():
                failed = out.parent / "last-failure.log"
                failed.write_text("$ " + " ".join(argv) + "\n" + log)
                errors = [ln for ln in log.splitlines() if "error" in ln.lower()]
                first = errors[0] if errors else (log.strip().splitlines() or ["no output"])[-1]
                raise CdevError(f"module build failed: {first.strip()} (log: {failed})")
            (work / "build.log").write_text(log)
            if out.exists():
                shutil.rmtree(out)
            work.rename(out)
    if progress:
        progress(f"built {ko}", 1.0)
    return ko


def _make_env() -> dict[str, str]:
    env = dict(os.environ)
    # A host kernel's settings must not leak into the guest module build.
    for k in ("ARCH", "CROSS_COMPILE", "KBUILD_OUTPUT", "O"):
        env.pop(k, None)
    return env
