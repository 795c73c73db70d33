"""Fuzzing the ``.cdev`` reader in CI: hypothesis (structured mutations of real files and
arbitrary bytes) and a short coverage-guided atheris run of ``tests/fuzz_fileformat.py``.

Properties: the reader raises nothing but :class:`cdev.errors.CdevError`; and it accepts a
file only if not one byte of it changed, returning exactly the plaintext.
The million-input run by hand is recorded in docs/file-format.md.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdev.fileformat import CHUNK, HEADER_LEN, MAGIC, RECORD, encrypt_stream
from tests.fuzz_fileformat import KEY, _provider, decrypt, seeds

ROOT = Path(__file__).resolve().parents[1]
CI_EXAMPLES = int(os.environ.get("CDEV_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(
    max_examples=CI_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SIZES = st.sampled_from([0, 1, 15, 16, 17, 100, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7])


def encrypt(plain: bytes) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plain), out, _provider, key=KEY, threads=1)
    return out.getvalue()


def test_every_seed_decrypts() -> None:
    for seed in seeds():
        assert decrypt(seed) is not None


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """A real file, its plaintext, and the file after a few random edits."""
    plain = os.urandom(draw(SIZES))
    blob = encrypt(plain)
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "drop", "insert", "swap", "dup"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            # header fields are where parsing decisions are made: hit them often
            at = draw(st.one_of(st.integers(8, 15), st.just(at)))
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "drop":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "swap" and len(data) > HEADER_LEN + RECORD:
            records = HEADER_LEN, HEADER_LEN + RECORD
            first = bytes(data[records[0] : records[1]])
            data[records[0] : records[1]] = data[records[1] : records[1] + RECORD]
            data[records[1] : records[1] + RECORD] = first
        elif kind == "dup":
            data += data[HEADER_LEN:]
    return plain, blob, bytes(data)


@FUZZ
@given(mutated())
def test_any_change_is_refused_and_only_cdev_errors_escape(
    case: tuple[bytes, bytes, bytes],
) -> None:
    plain, original, data = case
    got = decrypt(data)  # raises if anything but a CdevError escapes
    if data == original:
        assert got == plain
    else:
        assert got is None, "a modified file was accepted"


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=600),
        st.builds(lambda tail: MAGIC + tail, st.binary(max_size=600)),
        st.builds(
            lambda fields, rest: MAGIC + bytes(fields) + rest,
            st.lists(st.integers(0, 255), min_size=8, max_size=8),
            st.binary(min_size=0, max_size=300),
        ),
    )
)
def test_arbitrary_bytes_only_raise_cdev_errors(data: bytes) -> None:
    assert decrypt(data) is None  # no forgery from thin air either


@pytest.mark.slow
def test_coverage_guided_smoke_run(tmp_path: Path) -> None:
    runs = os.environ.get("CDEV_FUZZ_RUNS", "30000")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz_fileformat",
            f"-runs={runs}",
            "-max_len=140000",
            "-seed=1",
            str(tmp_path / "corpus"),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=600,
        check=False,
    )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err[-3000:]
    assert f"Done {runs} runs" in err
    assert len(list((tmp_path / "corpus").iterdir())) >= len(seeds())
