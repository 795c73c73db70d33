"""The guest kernel: Debian's own image, matching the installed ``linux-headers-amd64``.

The Debian kernel ABI (``6.1.0-NN-amd64``) moves with security updates, so the version is
derived from what the ``linux-headers-amd64`` meta-package depends on, never hard-coded; our
module is built against those headers and must run on the very same ABI. The matching
``linux-image-VER`` package is fetched with ``apt-get download`` and unpacked into
``${CDEV_CACHE_DIR:-/var/cache/cdev}/guest/VER`` (vmlinuz + modules, with a ``modules.dep``
from ``depmod``, which the .deb does not ship).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cdev.errors import CdevError, UnavailableError

ProgressFn = Callable[[str, float | None], None]

CACHE_ENV = "CDEV_CACHE_DIR"
DEFAULT_CACHE = "/var/cache/cdev"
VERSION_ENV = "CDEV_KERNEL_VERSION"
META_PACKAGE = "linux-headers-amd64"

_DEP = re.compile(r"linux-headers-(\d[^\s,()]*)")
_VERSION_OK = re.compile(r"^[0-9][A-Za-z0-9.+~_-]*$")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so that two builds of the same thing never race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _dpkg_query(fmt: str, package: str) -> str | None:
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f", fmt, package], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def check_version(version: str) -> str:
    if not _VERSION_OK.match(version):
        raise CdevError(f"not a kernel version: {version!r}")
    return version


def headers_version() -> str:
    """The Debian kernel ABI of the installed headers, e.g. ``6.1.0-56-amd64``.

    ``$CDEV_KERNEL_VERSION`` overrides it (its headers must be installed as well).
    """
    env = os.environ.get(VERSION_ENV)
    if env:
        return check_version(env)
    depends = _dpkg_query("${Depends}", META_PACKAGE)
    if depends:
        m = _DEP.search(depends)
        if m:
            return check_version(m.group(1))
    # No meta-package (other distribution, hand-installed headers): take the newest tree.
    trees = sorted(Path("/usr/src").glob("linux-headers-*-amd64"))
    if trees:
        return check_version(trees[-1].name.removeprefix("linux-headers-"))
    raise UnavailableError(
        f"no Debian kernel headers: install {META_PACKAGE} (apt-get install {META_PACKAGE})"
    )


def headers_dir(version: str) -> Path:
    """The kbuild tree for ``version`` (``/lib/modules/VER/build`` or ``/usr/src/...``)."""
    for cand in (
        Path("/lib/modules") / version / "build",
        Path("/usr/src") / f"linux-headers-{version}",
    ):
        if (cand / "Makefile").is_file():
            return cand
    raise UnavailableError(
        f"no kernel headers for {version}: apt-get install linux-headers-{version}"
    )


@dataclass(frozen=True)
class GuestKernel:
    """An unpacked guest kernel: the image and its module tree (with modules.dep)."""

    version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.version}"

    def is_complete(self) -> bool:
        return (self.root / ".complete").is_file() and self.vmlinuz.is_file()


def kernel_dir(version: str) -> Path:
    return cache_root() / "guest" / version


def cached_kernel(version: str | None = None) -> GuestKernel | None:
    """The unpacked kernel if it is already in the cache, without fetching anything."""
    version = version or headers_version()
    k = GuestKernel(version, kernel_dir(version))
    return k if k.is_complete() else None


def _run(argv: list[str], cwd: Path | None = None, what: str = "") -> None:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise UnavailableError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise CdevError(f"{what or argv[0]} failed (exit {proc.returncode}): {last[0]}")


def ensure_kernel(
    version: str | None = None, progress: ProgressFn | None = None, *, force: bool = False
) -> GuestKernel:
    """Return the guest kernel for ``version`` (default: the headers' ABI), fetching it once."""
    version = check_version(version or headers_version())
    dest = kernel_dir(version)
    kernel = GuestKernel(version, dest)
    if kernel.is_complete() and not force:
        return kernel
    for tool in ("apt-get", "dpkg-deb", "depmod"):
        if shutil.which(tool) is None:
            pkg = {"depmod": "kmod", "dpkg-deb": "dpkg", "apt-get": "apt"}[tool]
            raise UnavailableError(f"{tool} not found: install {pkg}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnavailableError(
            f"cannot create {dest.parent}: {exc.strerror}; set {CACHE_ENV}"
        ) from None
    with locked(dest.parent / f".{version}.lock"):
        if kernel.is_complete() and not force:
            return kernel
        package = f"linux-image-{version}"
        # Pin the image to the headers' package version when both come from apt.
        want = _dpkg_query("${Version}", f"linux-headers-{version}")
        spec = f"{package}={want}" if want else package
        with tempfile.TemporaryDirectory(prefix=f".{version}-", dir=dest.parent) as tmp:
            work = Path(tmp)
            if progress:
                progress(f"downloading {spec}", 0.1)
            try:
                _run(["apt-get", "download", spec], cwd=work, what=f"apt-get download {spec}")
            except CdevError:
                if spec == package:
                    raise
                # The archive may have moved on; the unpinned package still has the same ABI.
                _run(["apt-get", "download", package], cwd=work, what=f"apt-get download {package}")
            debs = sorted(work.glob(f"{package}_*.deb"))
            if not debs:
                raise CdevError(f"apt-get download {package} produced no .deb")
            if progress:
                progress(f"unpacking {debs[0].name}", 0.4)
            tree = work / "tree"
            _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], what="dpkg-deb -x")
            debs[0].unlink()
            staged = GuestKernel(version, tree)
            if not staged.vmlinuz.is_file() or not staged.modules_dir.is_dir():
                raise CdevError(f"{debs[0].name} has no vmlinuz-{version} or no modules")
            if progress:
                progress("depmod", 0.8)
            _run(["depmod", "-b", str(tree), version], what="depmod")
            (tree / ".complete").write_text(f"{spec}\n")
            if dest.exists():
                shutil.rmtree(dest)
            tree.rename(dest)
    if progress:
        progress(f"guest kernel {version} ready", 1.0)
    return kernel
