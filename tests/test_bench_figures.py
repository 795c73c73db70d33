"""The benchmark scripts redraw their figures from saved results (--from-json), without a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

MACHINE = {"date": "2026-01-02 03:04 UTC", "cpu": "Test CPU", "cpus": 2, "cores": 2,
           "kernel": "6.1", "python": "3.11", "loadavg_start": "0.10 0.20 0.30"}  # fmt: skip

SAMPLES: dict[str, dict[str, Any]] = {
    "device": {
        "date": "2026-01-02 03:04 UTC",
        "conditions": "TCG guest, Test CPU, 2 cores, 2 rounds of 0.1 s",
        "cpu_driver": "cbc(aes-generic)",
        "hash_driver": "hmac(sha256-generic)",
        "records": [
            {
                "lang": lang,
                "mode": mode,
                "alg": alg,
                "who": who,
                "size": size,
                "ops": [2000.0 / (k + 1), 2400.0 / (k + 1)],
            }
            for lang, mode, alg, who in (
                ("c", "sync", "aes-cbc", "virtio"),
                ("python", "sync", "aes-cbc", "upstream"),
                ("c", "sync", "hmac-sha256", "guest-cpu"),
                ("c", "inflight32", "aes-cbc", "virtio"),
            )
            for k, size in enumerate((64, 4096))
        ],
    },
    "chat": {
        "machine": MACHINE,
        "args": {"peers": 4, "messages": 2, "workers": 1, "rounds": 2},
        "runs": [
            {"contender": c, "round": r, "deliveries_per_s": d, "p50_ms": 1.5, "p99_ms": 9.0}
            for r in range(2)
            for c, d in (("cdev-plain", 1000 + r), ("ncat", 900 - r))
        ],
    },
    "crypt": {
        "conditions": {
            "date": "2026-01-02 03:04 UTC",
            "machine": "test: Test CPU, 2 CPUs",
            "filesystem": "/dev/shm/x (tmpfs)",
            "load average at start": "0.10",
        },
        "size": 1 << 20,
        "runs": {
            "cp": [{"wall": 0.01, "user": 0.0, "sys": 0.01, "rss_kib": 2000}] * 2,
            "cdev encrypt (suite 2)": [
                {"wall": 0.2, "user": 0.1, "sys": 0.01, "rss_kib": 5e4},
                {"wall": 0.3, "user": 0.1, "sys": 0.02, "rss_kib": 5e4},
            ],
        },
    },
    "foundation": {
        "machine": MACHINE,
        "providers": [
            {
                "name": "software",
                "available": True,
                "reason": "",
                "driver": "OpenSSL",
                "rates": {"aes-128-cbc": {"16": [1e5, 1.1e5], "1024": [9e4, 9.5e4]}},
            },
            {"name": "virtio", "available": False, "reason": "no node", "driver": "", "rates": {}},
        ],
        "openssl_speed": {"16": 5e8, "1024": 1.1e9},
        "files": {
            "size": 1 << 20,
            "contenders": {
                "cdev raw encrypt": [
                    {"wall": 0.4, "synced": 0.4, "maxrss_kib": 49000, "user": 0.3, "sys": 0.1}
                ],
                "openssl enc": [
                    {"wall": 0.01, "synced": 0.02, "maxrss_kib": 6000, "user": 0.0, "sys": 0.01}
                ],
            },
        },
        "inprocess": None,
    },
}


def redraw(script: str, src: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}_bench.py"), "--from-json", str(src),
         *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_from_json_draws_a_png(script: str, tmp_path: Path) -> None:
    src = tmp_path / f"{script}.json"
    src.write_text(json.dumps(SAMPLES[script]))
    res = redraw(script, src)
    assert res.returncode == 0, res.stderr
    png = tmp_path / f"{script}.png"  # next to the JSON by default
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000  # axes, bars, labels: not an empty canvas
    other = tmp_path / "elsewhere.png"
    assert redraw(script, src, "--plot-out", str(other)).returncode == 0
    assert other.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("script", sorted(SAMPLES))
@pytest.mark.parametrize(
    "content",
    [b'{"ops": {', b"[1, 2, 3]", b'{"unrelated": true}', b"\xff\xfe\x00garbage"],
    ids=["truncated", "not-an-object", "wrong-structure", "binary"],
)
def test_bad_results_one_line_and_failure(script: str, content: bytes, tmp_path: Path) -> None:
    src = tmp_path / "results.json"
    src.write_bytes(content)
    res = redraw(script, src)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"cdev: {src}: ")
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    assert not (tmp_path / "results.png").exists()  # no partial output


def test_missing_file_fails_cleanly(tmp_path: Path) -> None:
    res = redraw("device", tmp_path / "absent.json")
    assert res.returncode == 1
    assert res.stderr.startswith("cdev: ") and res.stderr.count("\n") == 1
