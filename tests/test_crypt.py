"""``cdev crypt`` on real files: round trips, openssl compatibility and every way to break it."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
from pathlib import Path

import pytest

from cdev.fileformat import CHUNK, HEADER_LEN, RECORD
from tests.cli_helpers import CDEV, assert_one_line_error, run_cdev

PASS = {"CDEV_PASSPHRASE": "correct horse battery staple"}
FAST = ["--work-factor", "10"]  # scrypt cost is not what these tests are about


def make(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def encrypt(tmp: Path, data_size: int) -> tuple[Path, bytes]:
    src = tmp / "plain.bin"
    data = make(src, data_size)
    # Suite 1 (CBC + HMAC) here, so that its files keep being written and read;
    # tests/test_crypt_suite2.py runs the same attacks on suite 2 (GCM).
    proc = run_cdev("crypt", "encrypt", str(src), *FAST, "--suite", "1", env=PASS)
    assert proc.returncode == 0, proc.stderr
    return tmp / "plain.bin.cdev", data


def leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.endswith(".part"))


@pytest.mark.parametrize("size", [0, 1, 15, 16, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 777])
def test_round_trip_sizes(tmp_path: Path, size: int) -> None:
    enc, data = encrypt(tmp_path, size)
    # Ciphertext size: header + one record per full chunk + a final record.
    full, rest = divmod(size, CHUNK)
    assert enc.stat().st_size == HEADER_LEN + full * RECORD + 48 + (rest // 16 + 1) * 16
    out = tmp_path / "out.bin"
    proc = run_cdev("crypt", "decrypt", str(enc), "-o", str(out), env=PASS)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data


def test_default_names_and_no_overwrite(tmp_path: Path) -> None:
    enc, data = encrypt(tmp_path, 1000)
    proc = run_cdev("crypt", "decrypt", str(enc), env=PASS)
    line = assert_one_line_error(proc, 2)  # a usage error, as the README's table says
    assert "already exists" in line and "--force" in line
    proc = run_cdev("crypt", "decrypt", str(enc), "--force", env=PASS)
    assert proc.returncode == 0
    assert (tmp_path / "plain.bin").read_bytes() == data


def test_never_writes_over_its_input(tmp_path: Path) -> None:
    enc, _ = encrypt(tmp_path, 100)
    before = enc.read_bytes()
    proc = run_cdev("crypt", "decrypt", str(enc), "-o", str(enc), "--force", env=PASS)
    assert "over the input" in assert_one_line_error(proc, 2)
    assert enc.read_bytes() == before


def test_stdin_to_stdout(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    enc = run_cdev("crypt", "encrypt", "-", "-o", "-", *FAST, env=PASS, input=data)
    assert enc.returncode == 0, enc.stderr
    dec = run_cdev("crypt", "decrypt", "-", "-o", "-", env=PASS, input=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == data


def test_key_file_and_passphrase_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex() + "\n")
    src = tmp_path / "a"
    data = make(src, 5000)
    assert run_cdev("crypt", "encrypt", str(src), "--key-file", str(key)).returncode == 0
    proc = run_cdev(
        "crypt", "decrypt", str(src) + ".cdev", "-o", str(tmp_path / "b"), "--key-file", str(key)
    )
    assert proc.returncode == 0 and (tmp_path / "b").read_bytes() == data
    # A passphrase-encrypted file asks for a passphrase, and vice versa: one clear line.
    proc = run_cdev("crypt", "decrypt", str(src) + ".cdev", "-o", str(tmp_path / "c"), env=PASS)
    assert "key file" in assert_one_line_error(proc, 1)
    pf = tmp_path / "pass"
    pf.write_text("from a file\n")
    assert (
        run_cdev(
            "crypt",
            "encrypt",
            str(src),
            "-o",
            str(tmp_path / "p.cdev"),
            "--passphrase-file",
            str(pf),
            *FAST,
        ).returncode
        == 0
    )
    proc = run_cdev(
        "crypt",
        "decrypt",
        str(tmp_path / "p.cdev"),
        "-o",
        str(tmp_path / "d"),
        env={"CDEV_PASSPHRASE": "from a file"},
    )
    assert proc.returncode == 0 and (tmp_path / "d").read_bytes() == data


def test_no_passphrase_without_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "a"
    make(src, 10)
    proc = run_cdev("crypt", "encrypt", str(src))
    assert "CDEV_PASSPHRASE" in assert_one_line_error(proc, 2)
    assert not (tmp_path / "a.cdev").exists()


def decrypt_fails(tmp: Path, enc: Path, words: str, env: dict[str, str] = PASS) -> None:
    out = tmp / "out.bin"
    proc = run_cdev("crypt", "decrypt", str(enc), "-o", str(out), env=env)
    line = assert_one_line_error(proc, 1)
    assert words in line, line
    assert not out.exists(), "no partial plaintext may be left behind"
    assert leftovers(tmp) == []


def test_wrong_passphrase(tmp_path: Path) -> None:
    enc, _ = encrypt(tmp_path, 3 * CHUNK)
    decrypt_fails(tmp_path, enc, "wrong passphrase", env={"CDEV_PASSPHRASE": "nope"})


@pytest.mark.parametrize(
    "offset",
    [
        9,
        20,
        40,
        HEADER_LEN + 3,
        HEADER_LEN + 100,
        HEADER_LEN + RECORD - 1,
        HEADER_LEN + RECORD + 20,
    ],
)
def test_any_flipped_bit_is_detected(tmp_path: Path, offset: int) -> None:
    enc, _ = encrypt(tmp_path, 2 * CHUNK + 10)
    blob = bytearray(enc.read_bytes())
    blob[offset] ^= 0x01
    enc.write_bytes(blob)
    out = tmp_path / "out.bin"
    proc = run_cdev("crypt", "decrypt", str(enc), "-o", str(out), env=PASS)
    assert_one_line_error(proc, 1)
    assert not out.exists() and leftovers(tmp_path) == []


def test_truncation_at_a_chunk_boundary(tmp_path: Path) -> None:
    enc, _ = encrypt(tmp_path, 3 * CHUNK + 5)
    blob = enc.read_bytes()
    enc.write_bytes(blob[: HEADER_LEN + 2 * RECORD])
    decrypt_fails(tmp_path, enc, "failed authentication")


def test_truncation_mid_chunk_and_header_only(tmp_path: Path) -> None:
    enc, _ = encrypt(tmp_path, 3 * CHUNK)
    blob = enc.read_bytes()
    enc.write_bytes(blob[: HEADER_LEN + RECORD + 1000])
    decrypt_fails(tmp_path, enc, "chunk 1")
    enc.write_bytes(blob[:HEADER_LEN])
    decrypt_fails(tmp_path, enc, "no final chunk")
    enc.write_bytes(blob[:30])
    decrypt_fails(tmp_path, enc, "header")


def test_reordered_chunks(tmp_path: Path) -> None:
    enc, _ = encrypt(tmp_path, 3 * CHUNK + 5)
    blob = enc.read_bytes()
    h, r = blob[:HEADER_LEN], blob[HEADER_LEN:]
    swapped = h + r[RECORD : 2 * RECORD] + r[:RECORD] + r[2 * RECORD :]
    enc.write_bytes(swapped)
    decrypt_fails(tmp_path, enc, "chunk 0")


def test_appended_data_and_spliced_files(tmp_path: Path) -> None:
    enc, _ = encrypt(tmp_path, CHUNK + 5)
    blob = enc.read_bytes()
    enc.write_bytes(blob + blob[HEADER_LEN:])  # the whole payload appended again
    decrypt_fails(tmp_path, enc, "failed authentication")
    enc.write_bytes(blob + b"x")
    decrypt_fails(tmp_path, enc, "chunk")


def test_not_a_cdev_file_and_unreadable_input(tmp_path: Path) -> None:
    junk = tmp_path / "junk.cdev"
    junk.write_bytes(b"hello world" * 100)
    decrypt_fails(tmp_path, junk, "not a cdev encrypted file")
    proc = run_cdev("crypt", "encrypt", str(tmp_path / "missing"), env=PASS)
    assert "cannot read" in assert_one_line_error(proc, 1)
    proc = run_cdev("crypt", "encrypt", str(tmp_path), "-o", str(tmp_path / "x"), env=PASS)
    assert "directory" in assert_one_line_error(proc, 1)


def test_unsupported_version(tmp_path: Path) -> None:
    enc, _ = encrypt(tmp_path, 10)
    blob = bytearray(enc.read_bytes())
    blob[8] = 9
    enc.write_bytes(blob)
    decrypt_fails(tmp_path, enc, "unsupported file version 9")


def test_full_disk_leaves_nothing_behind(tmp_path: Path, tiny_fs: Path) -> None:
    src = tmp_path / "big"
    make(src, 3 << 20)
    out = tiny_fs / "big.cdev"
    proc = run_cdev("crypt", "encrypt", str(src), "-o", str(out), *FAST, env=PASS)
    assert "no space left" in assert_one_line_error(proc, 1)
    assert list(tiny_fs.iterdir()) == []


# --raw: byte-identical to `openssl enc`, checked against the openssl command itself.
OPENSSL = shutil.which("openssl")


@pytest.mark.parametrize("bits", [128, 192, 256])
@pytest.mark.parametrize("size", [0, 15, 16, 100_000, 65536 * 2])
def test_raw_matches_openssl(tmp_path: Path, bits: int, size: int) -> None:
    assert OPENSSL, "openssl is installed by the bootstrap script"
    key, iv = os.urandom(bits // 8).hex(), os.urandom(16).hex()
    src = tmp_path / "p"
    data = make(src, size)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    cipher = f"aes-{bits}-cbc"
    proc = run_cdev(
        "crypt",
        "encrypt",
        "--raw",
        "--cipher",
        cipher,
        "--key",
        key,
        "--iv",
        iv,
        str(src),
        "-o",
        str(ours),
    )
    assert proc.returncode == 0, proc.stderr
    subprocess.run(
        [OPENSSL, "enc", f"-{cipher}", "-K", key, "-iv", iv, "-in", str(src), "-out", str(theirs)],
        check=True,
    )
    assert ours.read_bytes() == theirs.read_bytes()
    back = tmp_path / "back"
    proc = run_cdev(
        "crypt",
        "decrypt",
        "--raw",
        "--cipher",
        cipher,
        "--key",
        key,
        "--iv",
        iv,
        str(theirs),
        "-o",
        str(back),
    )
    assert proc.returncode == 0 and back.read_bytes() == data


def test_raw_bad_input(tmp_path: Path) -> None:
    src = tmp_path / "p"
    make(src, 33)
    k, iv = "00" * 16, "11" * 16
    proc = run_cdev(
        "crypt", "decrypt", "--raw", "--key", k, "--iv", iv, str(src), "-o", str(tmp_path / "o")
    )
    assert "16-byte blocks" in assert_one_line_error(proc, 1)
    make(src, 64)  # random data: the padding check fails (almost surely)
    proc = run_cdev(
        "crypt", "decrypt", "--raw", "--key", k, "--iv", iv, str(src), "-o", str(tmp_path / "o")
    )
    if proc.returncode:
        assert "bad decrypt" in assert_one_line_error(proc, 1)
        assert not (tmp_path / "o").exists()
    proc = run_cdev("crypt", "encrypt", "--raw", "--key", "zz", "--iv", iv, str(src))
    assert "--key must be 32 hex digits" in assert_one_line_error(proc, 2)
    proc = run_cdev(
        "crypt", "encrypt", "--raw", "--cipher", "aes-999", "--key", k, "--iv", iv, str(src)
    )
    assert "--cipher must be one of" in assert_one_line_error(proc, 2)


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    src = tmp_path / "big"
    make(src, 24 << 20)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [CDEV, "crypt", "encrypt", str(src), *FAST],
        stderr=slave,
        stdout=subprocess.DEVNULL,
        env={**os.environ, **PASS, "COLUMNS": "100"},
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO once the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    os.close(master)
    assert b"encrypting" in seen and b"MB" in seen
    # Without a terminal (every other test here) stderr stays empty on success.
    proc2 = run_cdev("crypt", "encrypt", str(src), "-o", str(tmp_path / "x"), *FAST, env=PASS)
    assert proc2.returncode == 0 and proc2.stderr == b""


@pytest.mark.parametrize(("enc_threads", "dec_threads"), [("1", "2"), ("2", "1"), ("3", "3")])
def test_thread_counts_do_not_change_the_format(
    tmp_path: Path, enc_threads: str, dec_threads: str
) -> None:
    src = tmp_path / "p"
    data = make(src, 9 * CHUNK + 123)
    env = {**PASS, "CDEV_THREADS": enc_threads}
    assert run_cdev("crypt", "encrypt", str(src), *FAST, env=env).returncode == 0
    enc = tmp_path / "p.cdev"
    out = tmp_path / "o"
    env = {**PASS, "CDEV_THREADS": dec_threads}
    proc = run_cdev("crypt", "decrypt", str(enc), "-o", str(out), env=env)
    assert proc.returncode == 0 and out.read_bytes() == data
    # A bad chunk in the middle of the pipeline still fails the whole file, leaving nothing.
    blob = bytearray(enc.read_bytes())
    blob[HEADER_LEN + 5 * RECORD + 40] ^= 1
    enc.write_bytes(blob)
    decrypt_fails(tmp_path, enc, "chunk 5")
