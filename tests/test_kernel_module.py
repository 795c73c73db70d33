"""Build the guest module for real against the installed Debian kernel headers and check it.

The build runs in a scratch copy of kernel/ so that it never races another build of the
tree. Skipped (with the reason) when no kernel headers are installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KERNEL = REPO / "kernel"
SOURCES = (
    "virtio_cryptodev.c",
    "virtio_cryptodev.h",
    "virtio_cryptodev_stats.h",
    "cryptodev.h",
    "Kbuild",
    "Makefile",
)


def headers_version() -> str | None:
    """The newest kernel whose build tree is installed (Debian's linux-headers-*)."""
    found = sorted(
        (p.name for p in Path("/lib/modules").glob("*") if (p / "build" / "Makefile").exists()),
        key=lambda v: [int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", v)],
    )
    return found[-1] if found else None


KVER = headers_version()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    assert KVER, "no kernel headers in /lib/modules: scripts/bootstrap installs them"
    work = tmp_path_factory.mktemp("kmod")
    for name in SOURCES:
        shutil.copy(KERNEL / name, work / name)
    proc = subprocess.run(
        ["make", "-C", f"/lib/modules/{KVER}/build", f"M={work}", "W=1", "modules"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    return work / "virtio_cryptodev.ko", log


def modinfo(ko: Path) -> dict[str, list[str]]:
    out = subprocess.run(
        [shutil.which("modinfo") or "/sbin/modinfo", str(ko)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), []).append(value.strip())
    return fields


def test_builds_without_warnings_at_w1(built: tuple[Path, str]) -> None:
    ko, log = built
    assert ko.exists()
    bad = [ln for ln in log.splitlines() if re.search(r"warning|error", ln, re.I)]
    assert not bad, "\n".join(bad)


def test_modinfo(built: tuple[Path, str]) -> None:
    info = modinfo(built[0])
    assert info["name"] == ["virtio_cryptodev"]
    assert info["license"] == ["GPL"]
    assert info["vermagic"][0].startswith(f"{KVER} ")
    # Matches virtio device id 63 (0x3f), any vendor: the id in virtio_cryptodev.h.
    assert info["alias"] == ["virtio:d0000003Fv*"]
    assert sorted(info["depends"][0].split(",")) == ["virtio", "virtio_ring"]
    assert any(p.startswith("major:") for p in info["parm"])
    assert info["description"][0]


def test_symbols_show_the_design(built: tuple[Path, str]) -> None:
    out = subprocess.run(
        ["nm", "-u", str(built[0])], capture_output=True, text=True, check=True
    ).stdout
    undefined = {line.split()[-1] for line in out.splitlines() if line.strip()}
    # Completion by interrupt with killable waits, not polling.
    assert {"wait_for_completion_killable", "complete", "virtqueue_get_buf"} <= undefined
    # Keys and plaintext are wiped; minors come from an IDA; nodes from devtmpfs.
    assert {"kfree_sensitive", "ida_alloc_range", "ida_free", "cdev_device_add"} <= undefined
    # Removal takes outstanding chains back after a reset.
    assert {"virtqueue_detach_unused_buf", "virtio_reset_device"} <= undefined
    assert "compat_ptr_ioctl" not in undefined  # a real compat_ioctl, not a pointer cast


def test_user_abi_header_matches_cryptodev_linux(tmp_path: Path) -> None:
    """kernel/cryptodev.h compiled as userspace: the sizes and numbers of cryptodev-linux."""
    assert shutil.which("cc"), "no C compiler: scripts/bootstrap installs build-essential"
    prog = tmp_path / "abi.c"
    prog.write_text(
        f'#include "{KERNEL}/cryptodev.h"\n'
        f'#include "{KERNEL}/virtio_cryptodev.h"\n'
        "#include <stdio.h>\n#include <stddef.h>\n"
        "int main(void) {\n"
        '  printf("%zu %zu %zu %zu %zu\\n", sizeof(struct session_op), '
        "sizeof(struct crypt_op), sizeof(struct session_info_op), "
        "offsetof(struct session_op, ses), offsetof(struct crypt_op, iv));\n"
        '  printf("%lx %lx %lx %lx %lx\\n", (unsigned long)CRIOGET, '
        "(unsigned long)CIOCGSESSION, (unsigned long)CIOCFSESSION, "
        "(unsigned long)CIOCCRYPT, (unsigned long)CIOCGSESSINFO);\n"
        '  printf("%lx %lx %lx %zu\\n", (unsigned long)CIOCAUTHCRYPT, '
        "(unsigned long)CIOCCPHASH, (unsigned long)CIOCASYMFEAT, "
        "sizeof(struct crypt_auth_op));\n"
        '  printf("%zu %zu %zu\\n", sizeof(struct vcd_req), sizeof(struct vcd_resp), '
        "sizeof(struct vcd_session_info));\n"
        "  return 0;\n}\n"
    )
    exe = tmp_path / "abi"
    subprocess.run(["cc", "-Wall", "-Werror", "-o", str(exe), str(prog)], check=True)
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split(
        "\n"
    )
    assert lines[0] == "48 48 268 40 40"
    assert lines[1] == "c0046365 c0306366 40046367 c0306368 c10c636b"
    assert lines[2] == "c048636d 40086370 8004636a 72"
    assert lines[3] == "48 16 264"


def checkpatch() -> Path | None:
    env = os.environ.get("CHECKPATCH")
    candidates = [Path(env)] if env else []
    candidates.append(Path.home() / ".cache" / "cdev" / "checkpatch" / "checkpatch.pl")
    candidates += sorted(Path("/usr/src").glob("linux-*/scripts/checkpatch.pl"))
    return next((c for c in candidates if c.is_file()), None)


def test_checkpatch_clean() -> None:
    script = checkpatch()
    if script is None:
        # Not in any headers package: fetch it from Debian's linux-source once (cached).
        subprocess.run(
            ["make", "-C", str(KERNEL), "fetch-checkpatch"], check=True, capture_output=True
        )
        script = checkpatch()
    assert script, "checkpatch.pl could not be fetched"
    files = ["virtio_cryptodev.c", "virtio_cryptodev.h", "cryptodev.h"]
    proc = subprocess.run(
        ["perl", str(script), "--no-tree", "--terse", "--show-types", "-f", *files],
        cwd=KERNEL,
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [ln for ln in proc.stdout.splitlines() if re.search(r": (ERROR|WARNING):", ln)]
    assert not problems, "\n".join(problems)
