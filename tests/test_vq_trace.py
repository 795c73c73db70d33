"""cdev vq-trace: parsing the device's trace lines, pairing, the command, and a real run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdev import vq_trace
from cdev.cli import build_app
from tests.qtest_guest import HEADER

REQ = (
    "4242@1700000000.000100:virtio_cryptodev_request dev 0x55d0 id {id} call 2 cmd 3 "
    "handle 0x10001 session 0xabc op 0 len 4096 out 4160 in 4112\n"
)
RESP = (
    "4242@1700000000.000350:virtio_cryptodev_response dev 0x55d0 id {id} call 2 cmd 3 "
    "handle 0x10001 session 0xabc status {st} ret_handle 0x0 ret_session 0xabc\n"
)


def test_names_match_the_header() -> None:
    text = HEADER.read_text()
    for prefix, table in (
        ("VCD_CALL_", vq_trace.CALL_NAMES),
        ("VCD_CMD_", vq_trace.CMD_NAMES),
        ("VCD_S_", vq_trace.STATUS_NAMES),
    ):
        found = {int(v): k for k, v in re.findall(rf"#define\s+{prefix}(\w+)\s+(\d+)", text)}
        assert found == table


def test_parse_with_and_without_timestamps() -> None:
    ev = vq_trace.parse_line(REQ.format(id=7))
    assert ev is not None and ev.kind == "request" and ev.pid == 4242
    assert ev.ts == pytest.approx(1700000000.0001)
    assert ev.num("handle") == 0x10001 and ev.num("len") == 4096 and ev.num("in") == 4112
    plain = vq_trace.parse_line("virtio_cryptodev_batch dev 0x1 popped 5 answered 3 inflight 2")
    assert plain is not None and plain.ts is None and plain.num("popped") == 5
    assert vq_trace.parse_line("virtio_queue_notify vdev 0x1 n 0 vq 0x2") is None
    assert vq_trace.parse_line("garbage") is None


def test_pairing_and_summary() -> None:
    lines = [
        REQ.format(id=1),
        REQ.format(id=2),
        "virtio_cryptodev_batch dev 0x55d0 popped 2 answered 0 inflight 2\n",
        RESP.format(id=2, st=2),
        RESP.format(id=1, st=0),
        REQ.format(id=3),
        "virtio_cryptodev_reset dev 0x55d0 inflight 1 handles 3\n",
    ]
    tracker = vq_trace.Tracker()
    done = list(vq_trace.exchanges(lines, tracker))
    assert [e.id for e in done] == [2, 1]
    assert done[0].status_name == "INVAL" and done[1].name == "CRYPT/encrypt"
    assert done[1].latency_us == pytest.approx(250, abs=1)
    s = tracker.summary.as_dict()
    assert s["requests"] == 3 and s["responses"] == 2 and s["pending"] == 1
    assert s["by_status"] == {"OK": 1, "INVAL": 1} and s["crypt_bytes_ok"] == 4096
    assert s["max_batch"] == 2 and s["resets"] == 1


def test_command_json(tmp_path: Path) -> None:
    log = tmp_path / "trace.log"
    log.write_text(REQ.format(id=1) + "unrelated line\n" + RESP.format(id=1, st=0))
    result = CliRunner().invoke(build_app(), ["vq-trace", str(log), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["request"] == "CRYPT/encrypt" and rows[0]["status_name"] == "OK"
    assert rows[-1]["summary"]["responses"] == 1


def test_command_table_and_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "trace.log"
    log.write_text(REQ.format(id=1) + RESP.format(id=1, st=4))
    result = CliRunner().invoke(build_app(), ["vq-trace", str(log)])
    assert result.exit_code == 0 and "NOSESSION" in result.stdout
    missing = CliRunner().invoke(build_app(), ["vq-trace", str(tmp_path / "nope.log")])
    assert missing.exit_code == 2 and "-trace virtio_cryptodev_*" in missing.output


def test_follow_picks_up_appended_lines(tmp_path: Path) -> None:
    log = tmp_path / "trace.log"
    log.write_text(REQ.format(id=1))
    lines = vq_trace.read_lines(log, follow=True, poll=0.01)
    assert "id 1 " in next(lines)
    with log.open("a") as f:
        f.write(RESP.format(id=1, st=0))
    assert "status 0" in next(lines)
    lines.close()


@pytest.mark.vm
def test_trace_of_a_real_device(tmp_path: Path) -> None:
    from cdev.vm import qemu_build
    from tests.qtest_guest import Qtest, VirtioCryptodev, close_chain, open_chain

    log = tmp_path / "trace.log"
    qt = Qtest(
        qemu_build.ensure_qemu(),
        qemu_build.firmware_dirs(),
        ["-device", "virtio-cryptodev-pci", *vq_trace.qemu_trace_args(log)],
    )
    try:
        dev = VirtioCryptodev(qt)
        dones = dev.submit([open_chain() for _ in range(5)])
        handles = [d.resp[1] for d in dones]
        dev.submit([close_chain(h) for h in handles] + [close_chain(0x999)])
    finally:
        qt.close()
    tracker = vq_trace.Tracker()
    done = list(vq_trace.exchanges(vq_trace.read_lines(log), tracker))
    assert [e.name for e in done].count("OPEN") == 5
    assert {e.ret_handle for e in done if e.name == "OPEN"} == set(handles)
    s = tracker.summary.as_dict()
    assert s["by_status"] == {"OK": 10, "NOHANDLE": 1}
    assert s["max_batch"] == 6 and s["engines"] == ["builtin"]
    assert s["latency_us_p50"] is not None


def _session_log(tmp_path: Path) -> Path:
    """A session's life: create (cipher+mac), two crypts (one refused), info, destroy."""
    lines = [
        "1@1700000000.000000:virtio_cryptodev_request dev 0x55d0 id 1 call 2 cmd 1 "
        "handle 0x10001 session 0x0 op 0 len 0 out 112 in 16\n",
        "1@1700000000.000001:virtio_cryptodev_chain dev 0x55d0 id 1 nout 2 nin 1 cipher 11 "
        "mac 18\n",
        "1@1700000000.000100:virtio_cryptodev_response dev 0x55d0 id 1 call 2 cmd 1 "
        "handle 0x10001 session 0x0 status 0 ret_handle 0x0 ret_session 0xabc\n",
        REQ.format(id=2),
        RESP.format(id=2, st=0),
        REQ.format(id=3).replace("op 0", "op 1"),
        RESP.format(id=3, st=2),
        "1@1700000000.000400:virtio_cryptodev_request dev 0x55d0 id 4 call 2 cmd 2 "
        "handle 0x10001 session 0xabc op 0 len 0 out 48 in 16\n",
        "1@1700000000.000500:virtio_cryptodev_response dev 0x55d0 id 4 call 2 cmd 2 "
        "handle 0x10001 session 0xabc status 0 ret_handle 0x0 ret_session 0xabc\n",
    ]
    log = tmp_path / "trace.log"
    log.write_text("".join(lines))
    return log


def test_algorithm_chain_and_totals_per_call(tmp_path: Path) -> None:
    tracker = vq_trace.Tracker()
    totals = vq_trace.CallTotals()
    done = list(vq_trace.exchanges(vq_trace.read_lines(_session_log(tmp_path)), tracker))
    for ex in done:
        totals.add(ex)
    assert [e.algorithm for e in done] == ["aes-cbc+hmac-sha256"] * 4
    assert done[0].chain == "2+1 112/16B" and done[1].chain == "4160/4112B"
    assert tracker.algorithms == {}  # destroyed: forgotten
    t = totals.as_dict()
    assert t["CRYPT/encrypt"] == {
        "count": 1,
        "errors": 0,
        "bytes": 4096,
        "latency_us_p50": pytest.approx(250, abs=1),
        "latency_us_p99": pytest.approx(250, abs=1),
    }
    assert t["CRYPT/decrypt"]["errors"] == 1 and t["CRYPT/decrypt"]["bytes"] == 0
    assert t["total"]["count"] == 4 and t["total"]["errors"] == 1


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert vq_trace.percentile(values, 50) == 50.0
    assert vq_trace.percentile(values, 99) == 99.0
    assert vq_trace.percentile([7.0], 99) == 7.0
    assert vq_trace.percentile([], 50) is None


@pytest.mark.parametrize(
    ("specs", "ids"),
    [
        (["cmd=CRYPT"], [2, 3]),
        (["cmd=crypt/decrypt"], [3]),
        (["status=error"], [3]),
        (["status=OK", "cmd=CRYPT"], [2]),
        (["call=IOCTL", "session=0xabc"], [1, 2, 3, 4]),
        (["handle=0x10002"], []),
        (["cmd=SESSION_CREATE,SESSION_DESTROY"], [1, 4]),
    ],
)
def test_filters(tmp_path: Path, specs: list[str], ids: list[int]) -> None:
    keep = vq_trace.make_filter(specs)
    done = vq_trace.exchanges(vq_trace.read_lines(_session_log(tmp_path)))
    assert [e.id for e in done if keep(e)] == ids


@pytest.mark.parametrize("spec", ["cmd", "nope=1", "status=FINE", "session=xyz", "call="])
def test_bad_filter_is_a_usage_error(tmp_path: Path, spec: str) -> None:
    result = CliRunner().invoke(
        build_app(), ["vq-trace", str(_session_log(tmp_path)), "--filter", spec]
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("cdev: --filter") and result.output.count("\n") == 1


def test_json_filter_and_from(tmp_path: Path) -> None:
    log = _session_log(tmp_path)
    args = ["vq-trace", "--from", str(log), "--json", "--filter", "cmd=CRYPT"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["request"] for r in rows[:-1]] == ["CRYPT/encrypt", "CRYPT/decrypt"]
    assert rows[0]["algorithm"] == "aes-cbc+hmac-sha256" and rows[0]["time"] is not None
    calls = rows[-1]["summary"]["calls"]
    assert set(calls) == {"CRYPT/encrypt", "CRYPT/decrypt", "total"}
    assert calls["total"] == {
        "count": 2,
        "errors": 1,
        "bytes": 4096,
        "latency_us_p50": pytest.approx(250, abs=1),
        "latency_us_p99": pytest.approx(250, abs=1),
    }


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (lambda p: p, 2, "is a directory"),
        (lambda p: p / "missing.log", 2, "no such trace log"),
        (lambda p: (p / "t.txt").write_text("hello\nworld\n") and p / "t.txt", 1, "no virtio"),
        (lambda p: (p / "e.log").write_text("") == 0 and p / "e.log", 1, "no virtio"),
        (
            lambda p: (p / "b.bin").write_bytes(b"\x1b[2J\x00" * 5000) and p / "b.bin",
            1,
            "no virtio",
        ),
        (lambda p: Path("/dev/zero"), 2, "not a regular file"),
    ],
)
def test_bad_logs_get_one_line_and_the_right_code(
    tmp_path: Path, make: Callable[[Path], Path], code: int, words: str
) -> None:
    result = CliRunner().invoke(build_app(), ["vq-trace", str(make(tmp_path))])
    assert result.exit_code == code, result.output
    assert result.output.startswith("cdev: ") and result.output.count("\n") == 1
    assert words in result.output and "\x1b" not in result.output


def test_hostile_log_lines_stay_harmless(tmp_path: Path) -> None:
    log = tmp_path / "trace.log"
    evil = "virtio_cryptodev_realize dev 0x1 engine \x1b]0;pwned\x07[red]x[/red]\n"
    log.write_text(evil + "x" * 100_000 + "\n" + REQ.format(id=1) + RESP.format(id=1, st=0))
    result = CliRunner().invoke(build_app(), ["vq-trace", str(log)])
    assert result.exit_code == 0, result.output
    assert "\x1b]" not in result.stdout and "pwned" not in result.stdout
    assert "CRYPT/encrypt" in result.stdout


def test_one_source_only(tmp_path: Path) -> None:
    log = _session_log(tmp_path)
    for args in ([], [str(log), "--from", str(log)], ["--from", str(log), "--attach", "vm"]):
        result = CliRunner().invoke(build_app(), ["vq-trace", *args])
        assert result.exit_code == 2 and "give one of" in result.output


def test_attach_to_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDEV_RUN_DIR", str(tmp_path / "run"))
    for spec, words in (
        ("novm", "no running VM named 'novm'"),
        (str(tmp_path / "none.sock"), "no such QMP socket"),
        (str(_session_log(tmp_path)), "not a socket"),
    ):
        result = CliRunner().invoke(build_app(), ["vq-trace", "--attach", spec])
        assert result.exit_code == 2, result.output
        assert words in result.output and result.output.count("\n") == 1


def test_attach_to_a_dead_socket(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: a QEMU that exited
    result = CliRunner().invoke(build_app(), ["vq-trace", "--attach", str(path)])
    assert result.exit_code == 1 and "nothing listens" in result.output


def test_plots(tmp_path: Path) -> None:
    out = tmp_path / "plot.png"
    args = ["vq-trace", "--from", str(_session_log(tmp_path)), "--plot", "--plot-out", str(out)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "latency" in result.stdout  # plotext's title
    svg = tmp_path / "plot.svg"
    args = ["vq-trace", "--from", str(_session_log(tmp_path)), "--plot-out", str(svg)]
    assert CliRunner().invoke(build_app(), args).exit_code == 0
    assert b"<svg" in svg.read_bytes()[:2000]
    bad = CliRunner().invoke(build_app(), [*args[:3], "--plot-out", str(tmp_path / "p.jpg")])
    assert bad.exit_code == 2 and "png or .svg" in bad.output
    nothing = CliRunner().invoke(
        build_app(), [*args[:3], "--filter", "handle=0x5", "--plot-out", str(out)]
    )
    assert nothing.exit_code == 1 and "nothing to plot" in nothing.output
