"""``cdev crypt -o TARGET`` for every kind of target, and write failures on every output.

Outputs that are not regular files are written through or refused, never replaced; a
failed write is one line and exit 1. All with real FIFOs, device nodes, symbolic links,
a full tmpfs and closed pipes.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from cdev.fileformat import HEADER_LEN
from tests.cli_helpers import CDEV, assert_one_line_error, run_cdev

PASS = {"CDEV_PASSPHRASE": "pw"}
FAST = ["--work-factor", "10"]
SIZE = 300_000  # several chunks, more than a pipe buffer


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    src = tmp_path / "plain"
    src.write_bytes(os.urandom(SIZE))
    return src


def encrypt_to(src: Path, target: Path | str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return run_cdev("crypt", "encrypt", str(src), "-o", str(target), *FAST, *extra, env=PASS)


def decrypts_to(blob: bytes, expected: bytes) -> bool:
    proc = run_cdev("crypt", "decrypt", "-", "-o", "-", env=PASS, input=blob)
    return proc.returncode == 0 and proc.stdout == expected


def node(path: Path, kind: int, major: int, minor: int) -> os.stat_result:
    os.mknod(path, kind | 0o666, os.makedev(major, minor))
    return os.lstat(path)


@pytest.mark.parametrize("force", [False, True])
def test_fifo_is_written_through(tmp_path: Path, plain: Path, force: bool) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    proc = encrypt_to(plain, fifo, *(["--force"] if force else []))
    reader.join(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    assert len(got[0]) > SIZE and decrypts_to(got[0], plain.read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "plain"]


def test_null_device_node_is_written_through(tmp_path: Path, plain: Path) -> None:
    dev = tmp_path / "null"
    before = node(dev, stat.S_IFCHR, 1, 3)  # what /dev/null is
    proc = encrypt_to(plain, dev, "--force")
    assert proc.returncode == 0, proc.stderr
    after = os.lstat(dev)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino


def test_full_device_node_fails_in_one_line_and_survives(tmp_path: Path, plain: Path) -> None:
    dev = tmp_path / "full"
    before = node(dev, stat.S_IFCHR, 1, 7)  # what /dev/full is: every write is ENOSPC
    proc = encrypt_to(plain, dev, "--force")
    assert "no space left on device" in assert_one_line_error(proc, 1)
    after = os.lstat(dev)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "plain"]


def test_block_device_and_socket_are_refused(tmp_path: Path, plain: Path) -> None:
    dev = tmp_path / "disk"
    node(dev, stat.S_IFBLK, 7, 250)
    proc = encrypt_to(plain, dev, "--force")
    assert "is a block device" in assert_one_line_error(proc, 2)
    assert stat.S_ISBLK(os.lstat(dev).st_mode)
    sock = tmp_path / "sock"
    node(sock, stat.S_IFSOCK, 0, 0)
    proc = encrypt_to(plain, sock, "--force")
    assert "is a socket" in assert_one_line_error(proc, 2)


def test_symlink_is_followed_and_kept(tmp_path: Path, plain: Path) -> None:
    target = tmp_path / "real"
    target.write_bytes(b"old contents")
    target.chmod(0o640)
    link = tmp_path / "link"
    link.symlink_to(target.name)
    proc = encrypt_to(plain, link)
    assert "already exists; use --force" in assert_one_line_error(proc, 2)
    assert target.read_bytes() == b"old contents"
    proc = encrypt_to(plain, link, "--force")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == "real"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640, "permissions of the replaced file"
    assert decrypts_to(target.read_bytes(), plain.read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "plain", "real"]


def test_dangling_symlink_is_refused(tmp_path: Path, plain: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to("nowhere")
    proc = encrypt_to(plain, link, "--force")
    assert "symbolic link to a missing file" in assert_one_line_error(proc, 2)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_usage_errors_exit_2(tmp_path: Path, plain: Path) -> None:
    proc = encrypt_to(plain, tmp_path, "--force")
    assert "is a directory" in assert_one_line_error(proc, 2)
    (tmp_path / "exists").write_bytes(b"keep")
    proc = encrypt_to(plain, tmp_path / "exists")
    assert "already exists; use --force" in assert_one_line_error(proc, 2)
    assert (tmp_path / "exists").read_bytes() == b"keep"


def test_cannot_create_reads_correctly(tmp_path: Path, plain: Path) -> None:
    proc = encrypt_to(plain, tmp_path / "no-such-dir" / "out")
    line = assert_one_line_error(proc, 1)
    assert "cannot create" in line and "No such file or directory" in line


def test_stdout_to_dev_full(plain: Path) -> None:
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [CDEV, "crypt", "encrypt", str(plain), "-o", "-", *FAST],
            stdout=full,
            stderr=subprocess.PIPE,
            env={**os.environ, **PASS},
            check=False,
        )
    line = assert_one_line_error(proc, 1)
    assert "cannot write standard output: no space left on device" in line


def test_stdout_to_a_full_tmpfs(tmp_path: Path, tiny_fs: Path, plain: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))
    with open(tiny_fs / "out", "wb") as out:
        proc = subprocess.run(
            [CDEV, "crypt", "encrypt", str(big), "-o", "-", *FAST],
            stdout=out,
            stderr=subprocess.PIPE,
            env={**os.environ, **PASS},
            check=False,
        )
    assert "no space left on device" in assert_one_line_error(proc, 1)


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_stdout_closed_pipe(tmp_path: Path, plain: Path, command: str) -> None:
    src = plain
    if command == "decrypt":
        assert encrypt_to(plain, tmp_path / "enc").returncode == 0
        src = tmp_path / "enc"
    proc = subprocess.Popen(
        [CDEV, "crypt", command, str(src), "-o", "-", *FAST[: 2 if command == "encrypt" else 0]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **PASS},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(HEADER_LEN)  # the reader goes away after the first bytes
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, b"", err)
    assert "the reader closed the pipe" in assert_one_line_error(done, 1)


@pytest.mark.parametrize(
    ("redirect", "words"),
    [("<&-", "cannot read standard input"), (">&-", "cannot write standard output")],
)
def test_closed_standard_descriptors(redirect: str, words: str) -> None:
    # sh closes the descriptor, then becomes cdev: Python starts with it missing.
    script = f'exec "$0" crypt encrypt - -o - {" ".join(FAST)} {redirect}'
    proc = subprocess.run(
        ["sh", "-c", script, CDEV],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **PASS},
        check=False,
    )
    assert words in assert_one_line_error(proc, 1)
