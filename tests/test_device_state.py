"""Parsing the device's state from either side: QOM answers over QMP, guest sysfs files.

Both come from another party, so odd answers must give one clear error, not a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cdev.cli import build_app
from cdev.device_state import StateError, guest_state, parse_host

STATS: dict[str, Any] = {
    "requests": {"open": 3, "close": 1, "session-create": 2, "crypt": 9, "other": 0},
    "statuses": {"OK": 14, "LIMIT": 1},
    "crypt-bytes": 4096,
    "inline": 8,
    "worker": 1,
    "in-flight": 0,
    "handles": 2,
    "sessions": 2,
}
HANDLES: list[Any] = [
    {
        "handle": 0x10001,
        "age-ms": 1500,
        "requests": 9,
        "bytes": 4096,
        "sessions": [
            {"session": 7, "cipher": 11, "mac": 0, "age-ms": 900, "requests": 8, "bytes": 4000},
            {"session": 9, "cipher": 11, "mac": 18, "age-ms": 800, "requests": 1, "bytes": 96},
        ],
    },
    {"handle": 0x20002, "age-ms": 10, "requests": 0, "bytes": 0, "sessions": []},
]


def test_parse_host() -> None:
    d = parse_host("/machine/x", STATS, HANDLES)
    assert d.session_count == 2 and [h.id for h in d.handles] == [0x10001, 0x20002]
    assert [s.algorithm for s in d.handles[0].sessions] == ["aes-cbc", "aes-cbc+hmac-sha256"]
    j = d.as_dict()
    assert j["open_handles"] == 2 and j["open_sessions"] == 2 and j["crypt_bytes"] == 4096
    json.dumps(j)


@pytest.mark.parametrize(
    ("stats", "handles"),
    [
        ({**STATS, "crypt-bytes": -1}, HANDLES),
        ({**STATS, "inline": "8"}, HANDLES),
        ({**STATS, "worker": True}, HANDLES),
        ({**STATS, "requests": [1, 2]}, HANDLES),
        ({**STATS, "statuses": {str(i): 1 for i in range(100)}}, HANDLES),
        (STATS, {"not": "a list"}),
        (STATS, [{"handle": 1}]),
        (STATS, [{**HANDLES[1], "sessions": [{"session": 1 << 64}]}]),
        (STATS, [None]),
        ([], HANDLES),
    ],
)
def test_odd_host_answers_are_errors(stats: Any, handles: Any) -> None:
    with pytest.raises(StateError):
        parse_host("/machine/x", stats, handles)


def _sysfs(root: Path, name: str, **values: str) -> None:
    d = root / name / "stats"
    d.mkdir(parents=True)
    for k, v in values.items():
        (d / k).write_text(v)


GOOD = {"open_files": "2\n", "sessions": "3\n", "in_flight": "0\n", "completed": "40\n",
        "errors": "1\n"}  # fmt: skip


def test_guest_state_from_sysfs(tmp_path: Path) -> None:
    _sysfs(tmp_path, "cryptodev1", **GOOD)
    _sysfs(tmp_path, "cryptodev0", **{**GOOD, "sessions": "0\n"})
    devices = guest_state(tmp_path)
    assert [(d.name, d.sessions, d.completed) for d in devices] == [
        ("cryptodev0", 0, 40),
        ("cryptodev1", 3, 40),
    ]


@pytest.mark.parametrize(
    "values",
    [
        {**GOOD, "errors": "x\n"},
        {**GOOD, "in_flight": "-1\n"},
        {k: GOOD[k] for k in list(GOOD)[:2]},
    ],
)
def test_odd_sysfs_is_an_error(tmp_path: Path, values: dict[str, str]) -> None:
    _sysfs(tmp_path, "cryptodev0", **values)
    with pytest.raises(StateError):
        guest_state(tmp_path)


def test_session_list_outside_a_guest_says_so() -> None:
    result = CliRunner().invoke(build_app(), ["session", "list"])
    assert result.exit_code == 2
    assert "no virtio-cryptodev devices here" in result.output and "--attach" in result.output
    assert result.output.count("\n") == 1


def test_session_list_attach_to_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDEV_RUN_DIR", str(tmp_path))
    result = CliRunner().invoke(build_app(), ["session", "list", "--attach", "nope"])
    assert result.exit_code == 2 and "no running VM named 'nope'" in result.output
