"""``cdev nodes`` and ``kernel/crypto_dev_nodes.sh`` against real files under a scratch root.

The root holds a /proc/devices-style file and a sysfs-style class directory as the module
makes them; nodes are made with real mknod (the tests run as root, as CI does).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from cdev import nodes
from cdev.errors import CdevError, UnavailableError, UsageError
from tests.cli_helpers import assert_one_line_error, run_cdev

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "kernel" / "crypto_dev_nodes.sh"
MAJOR = 240

PROC_DEVICES = f"""Character devices:
  1 mem
  4 /dev/vc/0
 10 misc
 60 cryptodev-old
{MAJOR} virtio-cryptodev
254 gpiochip

Block devices:
  8 sd
239 virtio-cryptodev
"""

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


def make_root(tmp_path: Path, minors: tuple[int, ...] = (0, 2), loaded: bool = True) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "dev").mkdir()
    text = PROC_DEVICES if loaded else PROC_DEVICES.replace(" virtio-cryptodev\n", " other\n")
    (root / "proc" / "devices").write_text(text)
    cls = root / "sys" / "class" / "virtio-cryptodev"
    cls.mkdir(parents=True)
    for m in minors:
        (cls / f"cryptodev{m}").mkdir()
        (cls / f"cryptodev{m}" / "dev").write_text(f"{MAJOR}:{m}\n")
    return root


def char_numbers(path: Path) -> tuple[int, int]:
    st = path.lstat()
    assert stat.S_ISCHR(st.st_mode), path
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def test_parse_major_reads_only_the_char_section() -> None:
    assert nodes.parse_major(PROC_DEVICES) == MAJOR
    assert nodes.parse_major(PROC_DEVICES, "misc") == 10
    assert nodes.parse_major(PROC_DEVICES, "sd") is None  # a block driver
    assert nodes.parse_major("") is None


def test_wanted_nodes_follow_sysfs_or_count(tmp_path: Path) -> None:
    root = make_root(tmp_path, minors=(0, 2, 10))
    assert [(w.name, w.major, w.minor) for w in nodes.wanted_nodes(root)] == [
        ("cryptodev0", MAJOR, 0),
        ("cryptodev2", MAJOR, 2),
        ("cryptodev10", MAJOR, 10),
    ]
    # --count N: exactly N nodes, 0..N-1 (the course's script made one too many).
    assert [w.minor for w in nodes.wanted_nodes(root, count=3)] == [0, 1, 2]
    assert nodes.wanted_nodes(root, count=0) == []
    with pytest.raises(UsageError):
        nodes.wanted_nodes(root, count=nodes.MAX_MINORS + 1)


def test_module_not_loaded_is_a_clear_error(tmp_path: Path) -> None:
    root = make_root(tmp_path, loaded=False)
    with pytest.raises(UnavailableError, match="load the module"):
        nodes.read_major(root)
    line = assert_one_line_error(run_cdev("nodes", "create", "--root", str(root)), 2)
    assert "virtio-cryptodev" in line


@as_root
def test_create_is_real_and_idempotent(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    proc = run_cdev("nodes", "create", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    dev = root / "dev"
    assert sorted(p.name for p in dev.iterdir()) == ["cryptodev0", "cryptodev2"]
    assert char_numbers(dev / "cryptodev0") == (MAJOR, 0)
    assert char_numbers(dev / "cryptodev2") == (MAJOR, 2)
    assert stat.S_IMODE((dev / "cryptodev0").stat().st_mode) == 0o666  # not the umask's
    before = {p.name: p.lstat().st_ino for p in dev.iterdir()}

    again = run_cdev("nodes", "create", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().split("\n")[0].startswith("keep ")
    assert {p.name: p.lstat().st_ino for p in dev.iterdir()} == before


@as_root
def test_create_fixes_wrong_nodes_mode_and_group(tmp_path: Path) -> None:
    root = make_root(tmp_path, minors=(0, 1))
    dev = root / "dev"
    (dev / "cryptodev0").write_text("not a device")
    os.mknod(dev / "cryptodev1", stat.S_IFCHR | 0o600, os.makedev(MAJOR, 7))
    proc = run_cdev("nodes", "create", "--root", str(root), "--mode", "0660", "--group", "0")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert [ln.split()[0] for ln in out.splitlines()] == ["replace", "replace"]
    for i in (0, 1):
        assert char_numbers(dev / f"cryptodev{i}") == (MAJOR, i)
        st = (dev / f"cryptodev{i}").lstat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 0

    # Right numbers, wrong mode: only a chmod, same inode.
    ino = (dev / "cryptodev0").lstat().st_ino
    proc = run_cdev("nodes", "create", "--root", str(root), "--mode", "0640")
    assert proc.returncode == 0 and "chmod" in proc.stdout.decode()
    assert (dev / "cryptodev0").lstat().st_ino == ino
    assert stat.S_IMODE((dev / "cryptodev0").lstat().st_mode) == 0o640


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    proc = run_cdev("nodes", "create", "--root", str(root), "--count", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == [
        f"would create {root}/dev/cryptodev0 (c {MAJOR} 0)",
        f"would create {root}/dev/cryptodev1 (c {MAJOR} 1)",
    ]
    assert list((root / "dev").iterdir()) == []


def test_not_root_gets_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    actions = nodes.plan_create(root, nodes.wanted_nodes(root))
    with pytest.raises(CdevError, match="needs root"):
        nodes.apply(actions)
    assert list((root / "dev").iterdir()) == []


def test_bad_mode_and_group_are_usage_errors(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    line = assert_one_line_error(
        run_cdev("nodes", "create", "--root", str(root), "--mode", "rw"), 2
    )
    assert "--mode" in line
    line = assert_one_line_error(
        run_cdev("nodes", "create", "--root", str(root), "--group", "no-such-group-xyz"), 2
    )
    assert "no such group" in line


@as_root
def test_list_and_remove(tmp_path: Path) -> None:
    root = make_root(tmp_path, minors=(0, 1))
    dev = root / "dev"
    assert run_cdev("nodes", "create", "--root", str(root), "--count", "1").returncode == 0
    # A node of another driver with our name pattern: listed as stale, kept by remove.
    os.mknod(dev / "cryptodev5", stat.S_IFCHR | 0o600, os.makedev(60, 5))

    proc = run_cdev("nodes", "list", "--root", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["major"] == MAJOR
    assert data["devices"] == ["cryptodev0", "cryptodev1"]
    by_name = {Path(r["path"]).name: r for r in data["nodes"]}
    assert by_name["cryptodev0"]["ok"] is True
    assert by_name["cryptodev5"]["ok"] is False
    table = run_cdev("nodes", "list", "--root", str(root))
    assert table.returncode == 0 and "cryptodev1 (cdev nodes create)" in table.stdout.decode()

    dry = run_cdev("nodes", "remove", "--root", str(root), "--dry-run")
    assert dry.stdout.decode().splitlines() == [f"would remove {dev}/cryptodev0"]
    assert run_cdev("nodes", "remove", "--root", str(root)).returncode == 0
    assert sorted(p.name for p in dev.iterdir()) == ["cryptodev5"]
    assert run_cdev("nodes", "remove", "--root", str(root), "--all").returncode == 0
    assert list(dev.iterdir()) == []


def test_no_devices_present(tmp_path: Path) -> None:
    root = make_root(tmp_path, minors=())
    proc = run_cdev("nodes", "create", "--root", str(root))
    assert proc.returncode == 0 and "no virtio-cryptodev devices" in proc.stdout.decode()


def test_script_is_valid_sh() -> None:
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["sh", "-n", str(SCRIPT)], check=True)


@as_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_script_in_a_private_mount_namespace(tmp_path: Path) -> None:
    """The shell script for real: /proc/devices and /dev are bind-mounted fakes."""
    root = make_root(tmp_path)
    inner = (
        f"mount --bind {root}/proc/devices /proc/devices && "
        f"mount --bind {root}/dev /dev && sh {SCRIPT} 3 && sh {SCRIPT} 3"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"no mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    # Created once (second run prints nothing), three nodes, no fourth.
    assert proc.stdout.splitlines() == [f"/dev/cryptodev{i}: c {MAJOR} {i}" for i in range(3)]
    assert sorted(p.name for p in (root / "dev").iterdir()) == [
        "cryptodev0",
        "cryptodev1",
        "cryptodev2",
    ]
    assert char_numbers(root / "dev" / "cryptodev2") == (MAJOR, 2)
