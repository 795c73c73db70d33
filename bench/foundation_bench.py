#!/usr/bin/env python3
"""Foundation benchmark for cdev (issue 2, section 6), in one run on one machine.

1. Every provider's AES-CBC (and HMAC-SHA256) throughput for request sizes 16 B .. 1 MiB,
   time-boxed per size, repeats interleaved; unavailable providers are listed with the reason.
2. A large file (default 1 GiB, on /var/tmp): ``cdev crypt --raw`` against
   ``openssl enc -aes-128-cbc`` (outputs checked byte-identical), and the authenticated
   ``cdev crypt`` format against ``age``. Wall time, MB/s, peak RSS (wait4 rusage of the
   child); contenders interleaved, median of the repeats. Fixed costs (start-up, scrypt)
   are measured separately on a tiny file.
3. In-process: cProfile of the authenticated format and prototypes of the proposed
   optimisations, each checked to produce output the current code reads back.

    python bench/foundation_bench.py [--size 1G] [--quick] [--markdown FILE] [--json FILE]
    python bench/foundation_bench.py --from-json FILE [--plot-out FILE.png]

--markdown also draws the figure next to it (.png), or where --plot-out says; --from-json
redraws it from results saved with --json without running anything.

MB/s means 10^6 bytes per second of plaintext.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import cProfile
import datetime
import hashlib
import io
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import cryptography
import figures
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import cdev
from cdev import fileformat, rawcbc
from cdev.errors import CdevError
from cdev.plugins import get_registry
from cdev.provider import AES_BLOCK, AES_CBC, HMAC_SHA256, Provider, Session

REQUEST_SIZES = (16, 64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20)
MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
GNU_TIME = "/usr/bin/time"  # Debian package "time"
CDEV = str(VENV_BIN / "cdev") if (VENV_BIN / "cdev").exists() else shutil.which("cdev") or "cdev"


# -- small helpers ------------------------------------------------------------------------
def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1G, 256M, 4096)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(MIB)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- machine ------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    model = "?"
    flags: set[str] = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": os.cpu_count(),
        "cpu_features": " ".join(f for f in ("aes", "avx2", "avx512f", "sha_ni") if f in flags),
        "memory": f"{mem_kib // 1024} MiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cdev": cdev.__version__,
        "cryptography": f"{cryptography.__version__} ({openssl_backend.openssl_version_text()})",
        "openssl": tool_version(["openssl", "version"]),
        "age": tool_version(["age", "--version"]),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# -- 1. providers -------------------------------------------------------------------------
def _timed_loop(fn: Callable[[], object], box: float) -> tuple[int, float]:
    """Call ``fn`` in growing batches until ``box`` seconds passed; (calls, seconds)."""
    batch, calls = 1, 0
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        calls += batch
        now = time.perf_counter()
        if now - start >= box:
            return calls, now - start
        if now - t0 < box / 20:
            batch *= 2


@dataclass
class ProviderResult:
    name: str
    available: bool
    reason: str = ""
    driver: str = ""
    # op -> size -> list of (ops/s) per repeat
    rates: dict[str, dict[int, list[float]]] = field(default_factory=dict)


def bench_providers(box: float, repeats: int) -> list[ProviderResult]:
    registry = get_registry()
    results: list[ProviderResult] = []
    live: list[tuple[ProviderResult, Provider, dict[str, Session]]] = []
    for name in sorted(registry.providers):
        try:
            provider = registry.open_provider(name)
        except CdevError as exc:
            results.append(ProviderResult(name, False, reason=str(exc).splitlines()[0]))
            continue
        res = ProviderResult(name, True, driver=provider.capabilities().driver)
        sessions = {
            "aes-128-cbc": provider.open_session(cipher=AES_CBC, key=os.urandom(16)),
            "aes-256-cbc": provider.open_session(cipher=AES_CBC, key=os.urandom(32)),
            "hmac-sha256": provider.open_session(mac=HMAC_SHA256, mac_key=os.urandom(32)),
        }
        results.append(res)
        live.append((res, provider, sessions))
    iv = os.urandom(AES_BLOCK)
    data = {size: os.urandom(size) for size in REQUEST_SIZES}
    try:
        # Repeats outermost: every provider/op/size is visited once per round, so a burst of
        # load from elsewhere spreads over all of them instead of spoiling one.
        for rnd in range(repeats):
            log(f"providers: round {rnd + 1}/{repeats}")
            for size in REQUEST_SIZES:
                for res, _, sessions in live:
                    for op, s in sessions.items():
                        buf = data[size]
                        fn: Callable[[], object]
                        if op == "hmac-sha256":
                            fn = lambda s=s, buf=buf: s.mac(buf)  # noqa: E731
                        else:
                            fn = lambda s=s, buf=buf: s.encrypt(buf, iv)  # noqa: E731
                        calls, secs = _timed_loop(fn, box)
                        res.rates.setdefault(op, {}).setdefault(size, []).append(calls / secs)
    finally:
        for _, provider, sessions in live:
            for s in sessions.values():
                s.close()
            provider.close()
    return results


def openssl_speed(seconds: int) -> dict[int, float]:
    """``openssl speed -evp aes-128-cbc``: bytes/s per block size, the C reference."""
    out = subprocess.run(
        ["openssl", "speed", "-elapsed", "-seconds", str(seconds), "-evp", "aes-128-cbc"],
        capture_output=True,
        text=True,
    ).stdout
    sizes = [16, 64, 256, 1024, 8192, 16384]
    for line in out.splitlines():
        if line.upper().startswith("AES-128-CBC"):
            vals = [float(v.rstrip("k")) * 1000 for v in line.split()[1:]]
            return dict(zip(sizes, vals, strict=False))
    return {}


# -- 2. files -----------------------------------------------------------------------------
@dataclass
class Run:
    wall: float  # process start to exit
    synced: float  # plus fsync of the output (cdev syncs itself; openssl and age do not)
    maxrss_kib: int
    user: float
    sys: float


def run_measured(argv: Sequence[str], out: Path | None, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` under GNU time for its peak RSS.

    The rusage of a child forked from this (large) process would report this process's own
    resident size: Linux keeps the pre-exec high-water mark. GNU time is small, so the
    figure it reports is the command's own.
    """
    with tempfile.NamedTemporaryFile("w+") as stats, tempfile.TemporaryFile() as err:
        cmd = [GNU_TIME, "-f", "%M %U %S", "-o", stats.name, *argv]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
        t1 = time.perf_counter()
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv)} failed: {err.read().decode(errors='replace')}")
        rss, user, sys_ = stats.read().split()[-3:]
    if out is not None:
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    t2 = time.perf_counter()
    return Run(t1 - t0, t2 - t0, int(rss), float(user), float(sys_))


@dataclass
class Contender:
    label: str
    argv: Callable[[Path, Path], list[str]]
    src: str  # key into the files dict
    expect: str  # "input" (decrypt: equals the input) or another contender's label
    env: dict[str, str] | None = None
    runs: list[Run] = field(default_factory=list)


def make_input(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MIB))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def bench_files(work: Path, size: int, repeats: int) -> dict[str, Any]:
    plain = work / "input.bin"
    log(f"files: writing {human(size)} of random data to {plain}")
    digests = {"input": make_input(plain, size)}
    key_hex, iv_hex = os.urandom(16).hex(), os.urandom(16).hex()
    key_file = work / "key"
    key_file.write_bytes(os.urandom(32))
    ident = work / "age-identity.txt"
    subprocess.run(["age-keygen", "-o", str(ident)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(ident)], check=True, capture_output=True, text=True
    ).stdout.strip()
    raw = ["--raw", "--cipher", "aes-128-cbc", "--key", key_hex, "--iv", iv_hex]
    ossl = ["openssl", "enc", "-aes-128-cbc", "-K", key_hex, "-iv", iv_hex]

    def cdev_cmd(*args: str) -> Callable[[Path, Path], list[str]]:
        return lambda i, o: [CDEV, "crypt", *args[:1], str(i), "-o", str(o), *args[1:]]

    # Pairs run back to back, order alternating per repeat. Raw decrypts are crossed: cdev
    # decrypts openssl's ciphertext and openssl decrypts cdev's.
    pairs = [
        (
            Contender("cdev raw encrypt", cdev_cmd("encrypt", *raw), "input", "openssl enc"),
            Contender(
                "openssl enc", lambda i, o: [*ossl, "-in", str(i), "-out", str(o)], "input", ""
            ),
        ),
        (
            Contender("cdev raw decrypt", cdev_cmd("decrypt", *raw), "openssl enc", "input"),
            Contender(
                "openssl enc -d",
                lambda i, o: [*ossl, "-d", "-in", str(i), "-out", str(o)],
                "cdev raw encrypt",
                "input",
            ),
        ),
        (
            Contender(
                "cdev encrypt (key file)",
                cdev_cmd("encrypt", "--key-file", str(key_file)),
                "input",
                "",
            ),
            Contender(
                "age -e (X25519)",
                lambda i, o: ["age", "-e", "-r", recipient, "-o", str(o), str(i)],
                "input",
                "",
            ),
        ),
        (
            Contender(
                "cdev decrypt (key file)",
                cdev_cmd("decrypt", "--key-file", str(key_file)),
                "cdev encrypt (key file)",
                "input",
            ),
            Contender(
                "age -d",
                lambda i, o: ["age", "-d", "-i", str(ident), "-o", str(o), str(i)],
                "age -e (X25519)",
                "input",
            ),
        ),
    ]
    for rep in range(repeats):
        files: dict[str, Path] = {"input": plain}
        for pair in pairs:
            for c in pair if rep % 2 == 0 else reversed(pair):
                out = work / (re.sub(r"\W+", "_", c.label) + ".out")
                out.unlink(missing_ok=True)
                log(f"files: repeat {rep + 1}/{repeats}: {c.label} (load {os.getloadavg()[0]:.2f})")
                c.runs.append(run_measured(c.argv(files[c.src], out), out, c.env))
                files[c.label] = out
            for c in pair:  # verify outside the timed region
                digests[f"{rep}:{c.label}"] = sha256_file(files[c.label])
            for c in pair:
                if c.expect:
                    want = digests.get(c.expect) or digests[f"{rep}:{c.expect}"]
                    if digests[f"{rep}:{c.label}"] != want:
                        raise SystemExit(f"{c.label}: output differs from {c.expect}!")
        for label, path in files.items():
            if label != "input":
                path.unlink()
    contenders = [c for pair in pairs for c in pair]
    fixed = bench_fixed(work, key_file, recipient, ident, raw, ossl, repeats)
    return {
        "size": size,
        "contenders": {c.label: [asdict(r) for r in c.runs] for c in contenders},
        "fixed": fixed,
        "verified": "cdev --raw ciphertext == openssl ciphertext; every decrypt == input",
    }


def bench_fixed(
    work: Path,
    key_file: Path,
    recipient: str,
    ident: Path,
    raw: list[str],
    ossl: list[str],
    repeats: int,
) -> dict[str, list[dict[str, Any]]]:
    """Fixed costs on a 1 KiB file: process start-up, and scrypt for passphrases."""
    tiny = work / "tiny.bin"
    tiny.write_bytes(os.urandom(1024))
    pw = work / "passphrase"
    pw.write_text("correct horse battery staple\n")
    out = work / "tiny.out"
    cmds: dict[str, list[str]] = {
        "cdev --raw (start-up)": [CDEV, "crypt", "encrypt", str(tiny), "-o", str(out), *raw],
        "openssl enc": [*ossl, "-in", str(tiny), "-out", str(out)],
        "cdev --key-file": [
            *[CDEV, "crypt", "encrypt", str(tiny), "-o", str(out)],
            *["--key-file", str(key_file)],
        ],
        "cdev --passphrase-file (scrypt 2^15)": [
            *[CDEV, "crypt", "encrypt", str(tiny), "-o", str(out)],
            *["--passphrase-file", str(pw)],
        ],
        "age -e -r": ["age", "-e", "-r", recipient, "-o", str(out), str(tiny)],
        # The floor for a Python CLI: the raw code path with only what it needs imported.
        "python floor (cdev.rawcbc + software only)": [
            sys.executable,
            "-c",
            "import sys; from cdev.rawcbc import encrypt_raw;"
            "from cdev_plugins.software import SoftwareProvider;"
            "encrypt_raw(open(sys.argv[1], 'rb'), open(sys.argv[2], 'wb'), SoftwareProvider(),"
            "bytes(16), bytes(16))",
            str(tiny),
            str(out),
        ],
    }
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in cmds}
    for _ in range(repeats):
        for label, argv in cmds.items():
            out.unlink(missing_ok=True)
            results[label].append(asdict(run_measured(argv, None)))
    out.unlink(missing_ok=True)
    return results


# -- 3. in-process: profile and prototypes -------------------------------------------------
def _read_full(f: BinaryIO, n: int) -> bytes:
    return fileformat._read_full(f, n)


def proto_auth_encrypt(
    src: BinaryIO, dst: BinaryIO, provider: Provider, *, key: bytes, workers: int = 2
) -> int:
    """The cdev v1 format, byte-compatible, with chunks sealed on a small thread pool.

    Chunks are independent (fresh IV each), so chunk i+1 can be encrypted and MACed while
    chunk i is; pyca/cryptography and OpenSSL release the GIL for long requests. At most
    ``2 * workers`` chunks are in flight, so memory stays bounded.
    """
    header = fileformat.Header(
        kdf=fileformat.KDF_RAW_KEY, scrypt=fileformat.ScryptParams(), salt=os.urandom(16)
    )
    keys = fileformat.derive_keys(header, None, key)
    cipher, mac = fileformat._open_sessions(provider, keys)
    body = header.body()
    dst.write(body + fileformat._header_tag(mac, body))

    def seal(index: int, chunk: bytes, last: bool) -> bytes:
        iv = os.urandom(AES_BLOCK)
        ct = cipher.encrypt(fileformat._pad(chunk) if last else chunk, iv)
        return b"".join((iv, ct, fileformat._chunk_tag(mac, index, last, iv, ct)))

    total = 0
    pending: deque[concurrent.futures.Future[bytes]] = deque()
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            index, chunk = 0, _read_full(src, fileformat.CHUNK)
            while True:
                last = len(chunk) < fileformat.CHUNK
                nxt = b"" if last else _read_full(src, fileformat.CHUNK)
                pending.append(pool.submit(seal, index, chunk, last))
                total += len(chunk)
                while pending and (last or len(pending) >= 2 * workers):
                    dst.write(pending.popleft().result())
                if last:
                    return total
                index, chunk = index + 1, nxt
    finally:
        cipher.close()
        mac.close()


def proto_auth_decrypt(
    src: BinaryIO, dst: BinaryIO, provider: Provider, *, key: bytes, workers: int = 2
) -> int:
    """Decrypt with verify+decrypt of each chunk on a pool; plaintext written in order and
    only after its chunk's MAC verified (the first failure raises before anything later)."""
    import hmac as _hmac

    header, body, tag = fileformat.read_header(src)
    keys = fileformat.derive_keys(header, None, key)
    cipher, mac = fileformat._open_sessions(provider, keys)
    if not _hmac.compare_digest(fileformat._header_tag(mac, body), tag):
        raise CdevError("bad header")

    def open_chunk(index: int, record: bytes, last: bool) -> bytes:
        iv, ct, t = record[:AES_BLOCK], record[AES_BLOCK:-32], record[-32:]
        if not _hmac.compare_digest(fileformat._chunk_tag(mac, index, last, iv, ct), t):
            raise CdevError(f"chunk {index} failed authentication")
        pt = cipher.decrypt(ct, iv)
        return pt[: -pt[-1]] if last else pt

    total = 0
    pending: deque[concurrent.futures.Future[bytes]] = deque()
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for index, (record, last) in enumerate(fileformat._records(src)):
                pending.append(pool.submit(open_chunk, index, record, last))
                while pending and (last or len(pending) >= 2 * workers):
                    pt = pending.popleft().result()
                    dst.write(pt)
                    total += len(pt)
        return total
    finally:
        cipher.close()
        mac.close()


def floor_raw_encrypt(src: BinaryIO, dst: BinaryIO, key: bytes, iv: bytes) -> int:
    """Lower bound for Python: one OpenSSL context for the whole stream, no copies."""
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    buf, out = bytearray(MIB), bytearray(MIB + AES_BLOCK)
    total = 0
    while n := src.readinto(buf):
        total += n
        dst.write(memoryview(out)[: enc.update_into(memoryview(buf)[:n], out)])
    pad = AES_BLOCK - total % AES_BLOCK
    dst.write(enc.update(bytes([pad]) * pad) + enc.finalize())
    return total


@dataclass
class Variant:
    label: str
    run: Callable[[BinaryIO, BinaryIO], int]
    src: str
    check: Callable[[Path], bool]
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # process CPU (all threads): load-robust


def bench_inprocess(work: Path, size: int, repeats: int) -> dict[str, Any]:
    """Current code against prototypes, file to file on the same filesystem, no fsync."""
    plain = work / "inproc.bin"
    digest = make_input(plain, size)
    provider = get_registry().open_provider("software")
    key, rkey, riv = os.urandom(32), os.urandom(16), os.urandom(16)
    ref_raw = work / "inproc.raw"
    with open(plain, "rb") as s, open(ref_raw, "wb") as d:
        rawcbc.encrypt_raw(s, d, provider, rkey, riv)
    ref_auth = work / "inproc.cdev"
    with open(plain, "rb") as s, open(ref_auth, "wb") as d:
        fileformat.encrypt_stream(s, d, provider, key=key)
    raw_digest = sha256_file(ref_raw)

    def is_plain(p: Path) -> bool:
        return sha256_file(p) == digest

    def is_raw(p: Path) -> bool:
        return sha256_file(p) == raw_digest

    def reads_back(p: Path) -> bool:
        h = hashlib.sha256()

        class Sink(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, b: Any) -> int:
                h.update(b)
                return len(b)

        with open(p, "rb") as s:
            fileformat.decrypt_stream(s, Sink(), provider, key=key)  # type: ignore[arg-type]
        return h.hexdigest() == digest

    def with_step(step: int, fn: Callable[..., int]) -> Callable[[BinaryIO, BinaryIO], int]:
        def run(s: BinaryIO, d: BinaryIO) -> int:
            old, rawcbc.STEP = rawcbc.STEP, step
            try:
                return fn(s, d, provider, rkey, riv)
            finally:
                rawcbc.STEP = old

        return run

    def auth_enc(fn: Callable[..., int]) -> Callable[[BinaryIO, BinaryIO], int]:
        return lambda s, d: fn(s, d, provider, key=key)

    variants = [
        Variant(
            "raw encrypt: current (64 KiB requests)",
            with_step(64 << 10, rawcbc.encrypt_raw),
            "plain",
            is_raw,
        ),
        Variant("raw encrypt: 1 MiB requests", with_step(MIB, rawcbc.encrypt_raw), "plain", is_raw),
        Variant(
            "raw encrypt: one context, update_into (floor)",
            lambda s, d: floor_raw_encrypt(s, d, rkey, riv),
            "plain",
            is_raw,
        ),
        Variant(
            "raw decrypt: current (64 KiB requests)",
            with_step(64 << 10, rawcbc.decrypt_raw),
            "raw",
            is_plain,
        ),
        Variant("raw decrypt: 1 MiB requests", with_step(MIB, rawcbc.decrypt_raw), "raw", is_plain),
        Variant("auth encrypt: current", auth_enc(fileformat.encrypt_stream), "plain", reads_back),
        Variant(
            "auth encrypt: 2-thread chunk pipeline",
            auth_enc(proto_auth_encrypt),
            "plain",
            reads_back,
        ),
        Variant("auth decrypt: current", auth_enc(fileformat.decrypt_stream), "auth", is_plain),
        Variant(
            "auth decrypt: 2-thread chunk pipeline", auth_enc(proto_auth_decrypt), "auth", is_plain
        ),
    ]
    srcs = {"plain": plain, "raw": ref_raw, "auth": ref_auth}
    out = work / "inproc.out"
    for rep in range(repeats):
        log(f"in-process: repeat {rep + 1}/{repeats}")
        for v in variants:
            with open(srcs[v.src], "rb") as s, open(out, "wb") as d:
                t0, c0 = time.perf_counter(), time.process_time()
                v.run(s, d)
                v.times.append(time.perf_counter() - t0)
                v.cpu.append(time.process_time() - c0)
            if rep == 0 and not v.check(out):
                raise SystemExit(f"prototype {v.label!r} produced wrong output")
            out.unlink()

    log("in-process: profiling the authenticated format")
    prof = cProfile.Profile()
    with open(plain, "rb") as s, open(out, "wb") as d:
        prof.enable()
        fileformat.encrypt_stream(s, d, provider, key=key)
        prof.disable()
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(10)
    for p in (plain, ref_raw, ref_auth, out):
        p.unlink(missing_ok=True)
    provider.close()
    return {
        "size": size,
        "variants": {v.label: v.times for v in variants},
        "cpu": {v.label: v.cpu for v in variants},
        "profile": stream.getvalue(),
    }


# -- report -------------------------------------------------------------------------------
def render(info: dict[str, Any], prov: list[ProviderResult], speed: dict[int, float],
           files: dict[str, Any] | None, inproc: dict[str, Any] | None) -> str:  # fmt: skip
    md: list[str] = ["## Machine", ""]
    md += [f"- {k}: {v}" for k, v in info.items()]
    md += ["", "## Provider request throughput (encrypt, median of rounds)", ""]
    for p in prov:
        if not p.available:
            md.append(f"- `{p.name}`: unavailable — {p.reason}")
    for p in (p for p in prov if p.available):
        md += ["", f"### `{p.name}` — {p.driver}", ""]
        ops = list(p.rates)
        head = "| request | " + " | ".join(f"{o} ops/s | {o} MB/s" for o in ops)
        md += [head + (" | openssl speed aes-128-cbc MB/s |" if speed else " |")]
        md += ["|" + "---:|" * (1 + 2 * len(ops) + (1 if speed else 0))]
        for size in REQUEST_SIZES:
            row = [human(size)]
            for o in ops:
                r = statistics.median(p.rates[o][size])
                row += [f"{r:,.0f}", f"{r * size / 1e6:,.1f}"]
            if speed:
                row.append(f"{speed[size] / 1e6:,.1f}" if size in speed else "")
            md.append("| " + " | ".join(row) + " |")
    if files:
        size = files["size"]
        n = len(next(iter(files["contenders"].values())))
        md += ["", f"## {human(size)} file on /var/tmp (median of {n}, interleaved)", ""]
        md += [
            "| contender | wall s | MB/s | wall+fsync s | MB/s (+fsync) "
            "| peak RSS MiB | user s | sys s |"
        ]
        md += ["|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, runs in files["contenders"].items():
            w = statistics.median(r["wall"] for r in runs)
            sy = statistics.median(r["synced"] for r in runs)
            rss = max(r["maxrss_kib"] for r in runs) / 1024
            u = statistics.median(r["user"] for r in runs)
            s = statistics.median(r["sys"] for r in runs)
            md.append(
                f"| {label} | {w:.2f} | {mbps(size, w):,.0f} | {sy:.2f} | {mbps(size, sy):,.0f} "
                f"| {rss:.1f} | {u:.2f} | {s:.2f} |"
            )
        md += ["", f"Verified: {files['verified']}.", "", "Fixed costs (1 KiB file, median):", ""]
        md += ["| command | wall s | peak RSS MiB |", "|---|---:|---:|"]
        for label, runs in files["fixed"].items():
            w = statistics.median(r["wall"] for r in runs)
            rss = max(r["maxrss_kib"] for r in runs) / 1024
            md.append(f"| {label} | {w:.3f} | {rss:.1f} |")
    if inproc:
        size = inproc["size"]
        md += ["", f"## In-process, {human(size)} file to file, no fsync (median)", ""]
        md += ["| variant | wall s | MB/s | CPU s | MB/s per CPU s |", "|---|---:|---:|---:|---:|"]
        for label, times in inproc["variants"].items():
            t = statistics.median(times)
            c = statistics.median(inproc["cpu"][label])
            md.append(
                f"| {label} | {t:.3f} | {mbps(size, t):,.0f} | {c:.3f} | {mbps(size, c):,.0f} |"
            )
        md += ["", "```", inproc["profile"].strip(), "```"]
    md += ["", f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    return "\n".join(md) + "\n"


def file_summary(files: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Median wall and wall+fsync s per contender, from the runs or the recorded summary."""
    if "contenders" not in files:
        return {str(k): {"wall": float(v["wall"]), "synced": float(v["synced"])}
                for k, v in files["summary"].items()}  # fmt: skip
    return {str(k): {f: statistics.median(float(r[f]) for r in runs) for f in ("wall", "synced")}
            for k, runs in files["contenders"].items()}  # fmt: skip


def plot(data: dict[str, Any], path: Path) -> None:
    """Provider MB/s against request size (log axes), then time and MB/s per file contender."""
    m = data["machine"]
    provs = [p for p in data["providers"] if p["available"]]
    files = data.get("files")
    if not provs and not files:
        raise ValueError("neither provider nor file results")
    title = (f"cdev foundation benchmark, {m['date']}\n{m['cpu']}, {m['cores']} cores, "
             f"Linux {m['kernel']}, Python {m['python']}, load average at start "
             f"{m['loadavg_start']}; medians")  # fmt: skip
    fig, axes = figures.new(int(bool(provs)) + 2 * int(bool(files)), title, width=5.4)
    if provs:
        ax = axes.pop(0)
        for p in provs:
            for op, by_size in p["rates"].items():
                sizes = sorted(int(s) for s in by_size)
                mbs = [statistics.median(float(v) for v in by_size[str(s)]) * s / 1e6
                       for s in sizes]  # fmt: skip
                ax.plot(sizes, mbs, marker="o", markersize=4, label=f"{p['name']} {op}")
        speed = {int(k): float(v) for k, v in data.get("openssl_speed", {}).items()}
        if speed:
            ax.plot(sorted(speed), [speed[s] / 1e6 for s in sorted(speed)], "k--", marker="x",
                    label="openssl speed aes-128-cbc")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        every = sorted({int(s) for p in provs for r in p["rates"].values() for s in r})
        ax.set_xticks(every, [figures.size_label(n) for n in every], rotation=45, fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("request size (log scale)")
        ax.set_ylabel("MB/s (10^6 B/s), log scale")
        ax.set_title("provider requests, one at a time", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if files:
        size = int(files["size"])
        rows = file_summary(files)
        names = list(rows)
        left, right = axes
        figures.bars(left, names, [rows[n]["wall"] for n in names], fmt="{:.2f}", width=0.4,
                     shift=-0.2, colour="dimgrey", label="wall s", rotation=90,
                     ylabel="seconds (lower is better)",
                     title=f"{human(size)} file: time per contender")  # fmt: skip
        figures.bars(left, names, [rows[n]["synced"] for n in names], fmt="{:.2f}", width=0.4,
                     shift=0.2, label="wall + fsync of the output s", rotation=90,
                     ylabel="seconds (lower is better)",
                     title=f"{human(size)} file: time per contender")  # fmt: skip
        figures.legend_on_top(left)
        figures.bars(right, names, [mbps(size, rows[n]["synced"]) for n in names],
                     ylabel="MB/s (10^6 B/s, higher is better)",
                     title=f"{human(size)} file: throughput, wall + fsync")  # fmt: skip
    figures.save(fig, path)


@contextlib.contextmanager
def workdir(base: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cdev-bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, help="file size (default 1G; --quick: 64M)")
    ap.add_argument("--quick", action="store_true", help="small file, short time boxes")
    ap.add_argument("--repeats", type=int, help="repeats of everything (default 3)")
    ap.add_argument("--box", type=float, help="seconds per provider request size (0.2)")
    ap.add_argument("--inproc-size", type=parse_size, help="in-process size (default 256M)")
    ap.add_argument("--workdir", default="/var/tmp", help="where big files go (/var/tmp)")
    ap.add_argument("--no-files", action="store_true", help="skip the file benchmarks")
    ap.add_argument("--markdown", type=Path, help="also write the report here")
    ap.add_argument("--json", type=Path, help="write raw figures as JSON here")
    figures.add_options(ap)
    a = ap.parse_args(argv)
    if a.from_json:
        return figures.from_json(a, plot)
    size = a.size or (64 * MIB if a.quick else 1 << 30)
    repeats = a.repeats or (2 if a.quick else 3)
    box = a.box or (0.03 if a.quick else 0.2)
    inproc_size = a.inproc_size or (32 * MIB if a.quick else 256 * MIB)
    for tool, package in (("openssl", "openssl"), ("age", "age"), (GNU_TIME, "time")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian package: {package})")

    info = machine_info()
    prov = bench_providers(box, repeats)
    speed = {} if a.quick else openssl_speed(1)
    files = inproc = None
    with workdir(a.workdir) as work:
        if not a.no_files:
            files = bench_files(work, size, repeats)
        inproc = bench_inprocess(work, inproc_size, repeats)
    report = render(info, prov, speed, files, inproc)
    print(report)
    if a.markdown:
        a.markdown.write_text(report)
    data = {
        "machine": info,
        "providers": [asdict(p) for p in prov],
        "openssl_speed": speed,
        "files": files,
        "inprocess": inproc,
    }
    if a.json:
        a.json.write_text(json.dumps(data, indent=1))
    plot_out = a.plot_out or (a.markdown.with_suffix(".png") if a.markdown else None)
    if plot_out:
        # Through JSON so the figure is drawn from exactly what --json saves (int keys become
        # strings there; --from-json must give the same picture).
        figures.draw(json.loads(json.dumps(data)), plot_out, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
