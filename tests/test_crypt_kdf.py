"""Key derivation costs: the default is age's, a hostile header cannot ask for more than the
bound, and memory is what docs/file-format.md says (measured on the real process)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdev.errors import CdevError
from cdev.fileformat import HEADER_LEN, MAGIC
from cdev.keys import MAX_SCRYPT_MEMORY, MAX_SCRYPT_WORK, ScryptParams, scrypt
from tests.cli_helpers import CDEV, assert_one_line_error

MiB = 1 << 20
PASS = {"CDEV_PASSPHRASE": "correct horse battery staple"}


def run_measured(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[bytes], int, float]:
    """Run ``cdev``; also return its peak RSS in bytes and its wall time.

    Measured by GNU time (a bootstrap package) rather than by wait4 here: a child's peak
    RSS includes what the process that forked it had, and pytest is large.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CDEV_")}
    full_env.update(env or {})
    with tempfile.NamedTemporaryFile("r") as report:
        proc = subprocess.run(
            ["/usr/bin/time", "-q", "-o", report.name, "-f", "%M %e", CDEV, *args],
            env=full_env,
            capture_output=True,
            check=False,
        )
        kib, seconds = report.read().split()
    return proc, int(kib) * 1024, float(seconds)


def test_default_cost_is_at_least_ages() -> None:
    default = ScryptParams()
    assert (default.log_n, default.r, default.p) >= (18, 8, 1)  # age: log2 N = 18, r = 8
    default.check()
    assert default.memory == 256 * MiB


@pytest.mark.parametrize(
    ("log_n", "r", "p"),
    [
        (20, 32, 16),
        (19, 8, 1),
        (18, 9, 1),
        (18, 8, 11),
        (21, 1, 1),
        (16, 1, 1),
        (10, 255, 255),
        (18, 0, 1),
    ],
)
def test_params_beyond_the_bound_are_refused(log_n: int, r: int, p: int) -> None:
    with pytest.raises(CdevError, match="out of range"):
        ScryptParams(log_n, r, p).check()


@pytest.mark.parametrize(
    ("log_n", "r", "p"), [(18, 8, 10), (20, 2, 10), (19, 4, 10), (15, 1, 1), (10, 1, 1)]
)
def test_params_at_the_bound_are_accepted(log_n: int, r: int, p: int) -> None:
    ScryptParams(log_n, r, p).check()


@pytest.mark.parametrize(("log_n", "r", "p"), [(15, 1, 1), (16, 2, 1), (12, 1, 10)])
def test_accepted_params_really_run(log_n: int, r: int, p: int) -> None:
    # OpenSSL refuses N >= 2**(16 r): such a header must be refused by the bound instead.
    assert len(scrypt(b"pw", b"salt" * 4, ScryptParams(log_n, r, p))) == 32


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
def test_every_accepted_header_value_is_within_the_bound(log_n: int, r: int, p: int) -> None:
    params = ScryptParams(log_n, r, p)
    try:
        params.check()
    except CdevError:
        return
    assert params.log_n < 16 * params.r  # else OpenSSL's scrypt would fail
    assert params.memory <= MAX_SCRYPT_MEMORY == 256 * MiB
    assert params.work <= MAX_SCRYPT_WORK == 10 * ScryptParams().work


def hostile_file(path: Path, log_n: int, r: int, p: int) -> Path:
    body = MAGIC + bytes([1, 1, 1, log_n, r, p, 16, 0]) + os.urandom(16)
    path.write_bytes(body + os.urandom(32) + os.urandom(200))
    assert len(body) + 32 == HEADER_LEN
    return path


@pytest.mark.parametrize(("log_n", "r", "p"), [(20, 32, 16), (19, 8, 1), (18, 8, 11)])
def test_hostile_header_is_refused_before_scrypt_runs(
    tmp_path: Path, log_n: int, r: int, p: int
) -> None:
    # (20, 32, 16) took 4.2 GB of RSS before the bound existed.
    enc = hostile_file(tmp_path / "h.cdev", log_n, r, p)
    proc, rss, elapsed = run_measured("crypt", "decrypt", str(enc), "-o", "-", env=PASS)
    assert "scrypt parameters out of range" in assert_one_line_error(proc, 1)
    assert rss < 100 * MiB and elapsed < 10, (rss, elapsed)


def test_passphrase_memory_is_the_scrypt_memory(tmp_path: Path) -> None:
    src = tmp_path / "p"
    data = os.urandom(100_000)
    src.write_bytes(data)
    proc, rss_enc, _ = run_measured("crypt", "encrypt", str(src), env=PASS)
    assert proc.returncode == 0, proc.stderr
    header = (tmp_path / "p.cdev").read_bytes()[:HEADER_LEN]
    assert tuple(header[11:14]) == (18, 8, 1)  # the default cost is what gets written
    proc, rss_dec, _ = run_measured("crypt", "decrypt", str(src) + ".cdev", "-o", "-", env=PASS)
    assert proc.returncode == 0 and proc.stdout == data
    # 256 MiB of scrypt plus the interpreter; never the gigabytes a header could ask for.
    for rss in (rss_enc, rss_dec):
        assert 256 * MiB < rss < (256 + 64) * MiB, rss / MiB


def test_key_file_peak_rss_is_under_64_mib(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    src = tmp_path / "big"
    src.write_bytes(os.urandom(48 * MiB))  # far more than memory may grow by
    out = tmp_path / "back"
    for threads in ("1", "2", "4"):
        env = {"CDEV_THREADS": threads}
        enc, rss_enc, _ = run_measured(
            "crypt", "encrypt", str(src), "--key-file", str(key), "--force", env=env
        )
        assert enc.returncode == 0, enc.stderr
        dec, rss_dec, _ = run_measured(
            "crypt", "decrypt", f"{src}.cdev", "-o", str(out), "--key-file", str(key), "--force",
            env=env,
        )  # fmt: skip
        assert dec.returncode == 0, dec.stderr
        assert rss_enc < 64 * MiB and rss_dec < 64 * MiB, (threads, rss_enc / MiB, rss_dec / MiB)
    assert out.read_bytes() == src.read_bytes()
