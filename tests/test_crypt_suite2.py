"""``cdev crypt`` suite 2 (AES-256-GCM STREAM) on real files: round trips at every size that
matters to the batching, and every way to break a file; suite 1 files keep decrypting."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from cdev_plugins.software import SoftwareProvider

from cdev import stream_gcm
from cdev.fileformat import CHUNK, HEADER_LEN, SUITE_AES256CBC_HMACSHA256, SUITE_AES256GCM
from cdev.stream_gcm import BATCH, TAG
from tests.cli_helpers import CDEV, assert_one_line_error, run_cdev

KEY_HEX = os.urandom(32).hex()
RECORD = CHUNK + TAG
BATCH_BYTES = BATCH * CHUNK


def key_file(tmp: Path, hex_key: str = KEY_HEX) -> Path:
    k = tmp / "key"
    k.write_text(hex_key + "\n")
    return k


def encrypt(tmp: Path, size: int, *extra: str, env: dict[str, str] | None = None) -> Path:
    src = tmp / "plain.bin"
    src.write_bytes(os.urandom(size))
    proc = run_cdev(
        "crypt", "encrypt", str(src), "--key-file", str(key_file(tmp)), "--force", *extra, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return tmp / "plain.bin.cdev"


def decrypt(tmp: Path, enc: Path, env: dict[str, str] | None = None) -> bytes:
    out = tmp / "out.bin"
    proc = run_cdev(
        "crypt", "decrypt", str(enc), "-o", str(out), "--force", "--key-file", str(key_file(tmp)),
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


def decrypt_fails(tmp: Path, enc: Path, words: str, hex_key: str = KEY_HEX) -> None:
    out = tmp / "out.bin"
    if out.exists():
        out.unlink()
    proc = run_cdev(
        "crypt", "decrypt", str(enc), "-o", str(out), "--key-file", str(key_file(tmp, hex_key))
    )
    line = assert_one_line_error(proc, 1)
    assert words in line, line
    assert not out.exists(), "no partial plaintext may be left behind"
    assert not [p for p in tmp.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize(
    "size",
    [0, 1, 16, CHUNK - 1, CHUNK, CHUNK + 1, BATCH_BYTES - 1, BATCH_BYTES, BATCH_BYTES + 1,
     3 * BATCH_BYTES + 5 * CHUNK + 7],
)  # fmt: skip
def test_round_trip_and_layout(tmp_path: Path, size: int) -> None:
    enc = encrypt(tmp_path, size)
    blob = enc.read_bytes()
    assert blob[9] == SUITE_AES256GCM, "suite 2 is the default with a provider that has GCM"
    # Header, a full record per full chunk, a final record of the rest (maybe empty).
    full, rest = divmod(size, CHUNK)
    assert len(blob) == HEADER_LEN + full * RECORD + rest + TAG
    assert decrypt(tmp_path, enc) == (tmp_path / "plain.bin").read_bytes()


@pytest.mark.parametrize(("enc_threads", "dec_threads"), [("1", "3"), ("3", "1"), ("2", "2")])
def test_thread_counts_agree(tmp_path: Path, enc_threads: str, dec_threads: str) -> None:
    enc = encrypt(tmp_path, 2 * BATCH_BYTES + 123, env={"CDEV_THREADS": enc_threads})
    got = decrypt(tmp_path, enc, env={"CDEV_THREADS": dec_threads})
    assert got == (tmp_path / "plain.bin").read_bytes()


def test_stdin_to_stdout_with_short_reads(tmp_path: Path) -> None:
    data = os.urandom(BATCH_BYTES + 1000)
    k = str(key_file(tmp_path))
    enc = run_cdev("crypt", "encrypt", "-", "-o", "-", "--key-file", k, input=data)
    assert enc.returncode == 0, enc.stderr
    dec = run_cdev("crypt", "decrypt", "-", "-o", "-", "--key-file", k, input=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == data


def test_wrong_key(tmp_path: Path) -> None:
    enc = encrypt(tmp_path, 3 * CHUNK)
    decrypt_fails(tmp_path, enc, "wrong passphrase or key", hex_key=os.urandom(32).hex())


@pytest.mark.parametrize(
    "offset",
    [
        0, 8, 9, 10, 20, 31, 32, 63,  # magic, version, suite, KDF, salt, header tag
        HEADER_LEN, HEADER_LEN + 100,  # first chunk's ciphertext
        HEADER_LEN + RECORD - 1,  # first chunk's tag
        HEADER_LEN + (BATCH + 1) * RECORD + 3,  # a chunk in the second batch
        -1,  # the final chunk's tag
    ],
)  # fmt: skip
def test_any_flipped_bit_is_detected(tmp_path: Path, offset: int) -> None:
    enc = encrypt(tmp_path, BATCH_BYTES + 2 * CHUNK + 10)
    blob = bytearray(enc.read_bytes())
    blob[offset] ^= 0x01
    enc.write_bytes(blob)
    out = tmp_path / "out.bin"
    proc = run_cdev(
        "crypt", "decrypt", str(enc), "-o", str(out), "--key-file", str(key_file(tmp_path))
    )
    assert_one_line_error(proc, 1)
    assert not out.exists()


@pytest.mark.parametrize("chunks", [1, 2, BATCH, BATCH + 1])
def test_truncation_at_a_chunk_or_batch_boundary(tmp_path: Path, chunks: int) -> None:
    enc = encrypt(tmp_path, (BATCH + 3) * CHUNK + 5)
    enc.write_bytes(enc.read_bytes()[: HEADER_LEN + chunks * RECORD])
    decrypt_fails(tmp_path, enc, f"chunk {chunks - 1} failed authentication")


def test_truncation_mid_chunk_and_header_only(tmp_path: Path) -> None:
    enc = encrypt(tmp_path, 3 * CHUNK)
    blob = enc.read_bytes()
    enc.write_bytes(blob[: HEADER_LEN + RECORD + 1000])
    decrypt_fails(tmp_path, enc, "chunk 1")
    enc.write_bytes(blob[: HEADER_LEN + RECORD + 5])  # shorter than a tag
    decrypt_fails(tmp_path, enc, "chunk 1")
    enc.write_bytes(blob[:HEADER_LEN])
    decrypt_fails(tmp_path, enc, "no final chunk")


def test_reordered_and_duplicated_chunks(tmp_path: Path) -> None:
    enc = encrypt(tmp_path, 3 * CHUNK + 5)
    blob = enc.read_bytes()
    h, r = blob[:HEADER_LEN], blob[HEADER_LEN:]
    enc.write_bytes(h + r[RECORD : 2 * RECORD] + r[:RECORD] + r[2 * RECORD :])
    decrypt_fails(tmp_path, enc, "chunk 0")
    enc.write_bytes(h + r[:RECORD] + r)
    decrypt_fails(tmp_path, enc, "chunk 1")


def test_appended_data_and_spliced_files(tmp_path: Path) -> None:
    enc = encrypt(tmp_path, CHUNK + 5)
    blob = enc.read_bytes()
    enc.write_bytes(blob + blob[HEADER_LEN:])
    decrypt_fails(tmp_path, enc, "failed authentication")
    enc.write_bytes(blob + b"x")
    decrypt_fails(tmp_path, enc, "chunk 1")
    # Another file's chunks under this file's header: a different key per file (salt).
    (tmp_path / "other").mkdir()
    other = encrypt(tmp_path / "other", CHUNK + 5).read_bytes()
    enc.write_bytes(blob[:HEADER_LEN] + other[HEADER_LEN:])
    decrypt_fails(tmp_path, enc, "chunk 0")


def test_suite_byte_cannot_be_downgraded(tmp_path: Path) -> None:
    enc = encrypt(tmp_path, 1000)
    blob = bytearray(enc.read_bytes())
    blob[9] = SUITE_AES256CBC_HMACSHA256
    enc.write_bytes(blob)
    decrypt_fails(tmp_path, enc, "wrong passphrase or key, or the file header was modified")
    blob[9] = 7
    enc.write_bytes(blob)
    decrypt_fails(tmp_path, enc, "unsupported cipher suite 7")


def test_suite_1_files_still_decrypt_and_can_still_be_written(tmp_path: Path) -> None:
    enc = encrypt(tmp_path, 2 * CHUNK + 3, "--suite", "1")
    blob = enc.read_bytes()
    assert blob[9] == SUITE_AES256CBC_HMACSHA256
    assert decrypt(tmp_path, enc) == (tmp_path / "plain.bin").read_bytes()


def test_passphrase_files_use_suite_2_too(tmp_path: Path) -> None:
    src = tmp_path / "p"
    src.write_bytes(b"hello" * 1000)
    env = {"CDEV_PASSPHRASE": "pw"}
    proc = run_cdev("crypt", "encrypt", str(src), "--work-factor", "10", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.cdev").read_bytes()[9] == SUITE_AES256GCM
    out = tmp_path / "o"
    proc = run_cdev("crypt", "decrypt", str(tmp_path / "p.cdev"), "-o", str(out), env=env)
    assert proc.returncode == 0 and out.read_bytes() == src.read_bytes()


def test_bad_suite_option(tmp_path: Path) -> None:
    src = tmp_path / "p"
    src.write_bytes(b"x")
    proc = run_cdev("crypt", "encrypt", str(src), "--suite", "3", "--key-file",
                    str(key_file(tmp_path)))  # fmt: skip
    assert "--suite must be auto, 1 or 2" in assert_one_line_error(proc, 2)
    assert not (tmp_path / "p.cdev").exists()


class _ThreadRecorder(io.BytesIO):
    """An output that notes which thread made each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[int] = set()
        self.writes = 0

    def write(self, data: Any) -> int:
        self.writers.add(threading.get_ident())
        self.writes += 1
        return super().write(data)


def test_the_calling_thread_writes_while_a_worker_reads_and_seals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The writing thread allocates the output's pages: it must be the one that called, not a
    # thread the scheduler put on another CPU (see stream_gcm._Pipeline).
    plain = os.urandom(5 * BATCH_BYTES + 77)
    key = os.urandom(32)
    with SoftwareProvider() as provider:
        enc = _ThreadRecorder()
        crypt_threads: set[int] = set()
        seal = stream_gcm._seal_batch

        def noting_seal(*a: Any) -> memoryview:
            crypt_threads.add(threading.get_ident())
            return seal(*a)

        with monkeypatch.context() as m:
            m.setattr(stream_gcm, "_seal_batch", noting_seal)
            assert stream_gcm.encrypt_chunks(io.BytesIO(plain), enc, provider, key, CHUNK, 2)
        assert enc.writers == {threading.get_ident()} and enc.writes == 6
        assert crypt_threads and threading.get_ident() not in crypt_threads
        dec = _ThreadRecorder()
        n = stream_gcm.decrypt_chunks(io.BytesIO(enc.getvalue()), dec, provider, key, CHUNK, 2)
        assert n == len(plain) and dec.getvalue() == plain
        assert dec.writers == {threading.get_ident()}


def test_a_failed_write_ends_even_while_the_input_stays_open(tmp_path: Path) -> None:
    # When the write fails, the worker is blocked reading a pipe that does not end: cdev must
    # still report the error and exit, not wait for the input.
    proc = subprocess.Popen(
        [CDEV, "crypt", "encrypt", "-", "-o", "-", "--key-file", str(key_file(tmp_path))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout and proc.stderr

    def feed() -> None:  # one whole batch and the start of the next, then nothing
        assert proc.stdin
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(os.urandom(BATCH_BYTES + 1000))
            proc.stdin.flush()

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert proc.stdout.read(1)  # the header is out: the failing write is a batch's
        proc.stdout.close()
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
        feeder.join()
        proc.stdin.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "the reader closed the pipe" in lines[0], err
