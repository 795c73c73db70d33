"""Coverage-guided fuzzing of the ``.cdev`` reader (atheris, libFuzzer underneath).

The property: for any bytes, decryption either succeeds or raises a documented
:class:`cdev.errors.CdevError`; anything else is a crash that libFuzzer reports with the
input that caused it. The seed corpus is real files (0 to 3 chunks, key file and
passphrase); the fuzzer mutates from there, so it gets past the header tag into the records.

By hand (figures in docs/file-format.md)::

    .venv/bin/python -m tests.fuzz_fileformat -runs=1000000 -max_len=140000 CORPUS_DIR

``CORPUS_DIR`` is created and seeded when empty. ``tests/test_fileformat_fuzz.py`` runs a
small budget in CI.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from cdev_plugins.software import SoftwareProvider

from cdev.errors import CdevError
from cdev.fileformat import KDF_SCRYPT, decrypt_stream, encrypt_stream
from cdev.keys import ScryptParams

KEY = bytes(range(32))
PASSPHRASE = b"fuzz"
CHEAP_SCRYPT = ScryptParams(log_n=10, r=1, p=1)  # the seeds' cost
CHEAP_WORK = ScryptParams(log_n=12, r=8, p=1).work  # above this, the key is offered instead
SEED_SIZES = (0, 1, 15, 16, 17, 1000, 65535, 65536, 65537, 2 * 65536 + 5)

_provider = SoftwareProvider()


def decrypt(data: bytes) -> bytes | None:
    """Decrypt ``data`` as the CLI would; None when it is refused with a documented error.

    A header asking for scrypt gets the passphrase when its cost is small (so that key
    derivation and the header tag are exercised at fuzzing speed), else the key, which
    the reader refuses before running scrypt.
    """
    passphrase: bytes | None = None
    key: bytes | None = KEY
    if len(data) > 13 and data[10] == KDF_SCRYPT:
        cost = ScryptParams(data[11], data[12], data[13])
        if cost.r >= 1 and cost.p >= 1 and cost.log_n <= 12 and cost.work <= CHEAP_WORK:
            passphrase, key = PASSPHRASE, None
    out = io.BytesIO()
    try:
        decrypt_stream(io.BytesIO(data), out, _provider, passphrase=passphrase, key=key, threads=1)
    except CdevError:
        return None
    return out.getvalue()


def seeds() -> list[bytes]:
    found = []
    for size in SEED_SIZES:
        plain = bytes(i % 251 for i in range(size))
        for secret in ({"key": KEY}, {"passphrase": PASSPHRASE, "params": CHEAP_SCRYPT}):
            out = io.BytesIO()
            encrypt_stream(io.BytesIO(plain), out, _provider, threads=1, **secret)  # type: ignore[arg-type]
            found.append(out.getvalue())
    return found


def test_one_input(data: bytes) -> None:
    decrypt(data)


def main(argv: list[str]) -> None:
    import importlib

    import atheris  # only here: the hypothesis tests import this module without it

    # Coverage feedback from cdev's code: import it (and this harness, bound to it) afresh
    # under instrumentation; what __main__ imported above was not instrumented.
    for name in [n for n in sys.modules if n.split(".")[0] in ("cdev", "cdev_plugins")]:
        del sys.modules[name]
    with atheris.instrument_imports(include=["cdev", "cdev_plugins"]):
        harness = importlib.import_module("tests.fuzz_fileformat")
    corpora = [a for a in argv[1:] if not a.startswith("-")]
    for corpus in map(Path, corpora):
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for i, seed in enumerate(harness.seeds()):
                (corpus / f"seed-{i:02d}").write_bytes(seed)
    atheris.Setup(argv, harness.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
