"""cdev vq-trace: parsing the device's trace lines, pairing, the command, and a real run."""

from __future__ import annotations

import json
import re
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
