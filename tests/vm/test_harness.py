"""The VM harness itself: one boot, many commands, files, ports, the module and the device."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cdev.commands.vm import parse_port
from cdev.errors import UsageError
from cdev.vm.guest import Guest, GuestError, GuestTimeout

pytestmark = pytest.mark.vm


def test_exit_status_and_streams(guest: Guest) -> None:
    assert guest.run("echo out; echo err >&2; exit 7", timeout=60) == (7, "out\n", "err\n")
    assert guest.run(["true"], timeout=60).status == 0
    assert guest.run("kill -KILL $$", timeout=60).status == -9
    assert guest.run(["/no/such/program"], timeout=60).status == 127


def test_binary_output_and_stdin_round_trip(guest: Guest) -> None:
    data = bytes(range(256)) * 64 + b"\n\r\x00END"
    res = guest.run_bytes("cat; printf '\\033[2J\\000' >&2", timeout=60, input=data)
    assert res.status == 0
    assert res.stdout == data
    assert res.stderr == b"\x1b[2J\x00"


def test_kernel_messages_stay_out_of_command_output(guest: Guest) -> None:
    res = guest.run("echo 'cdev test: printk noise' > /dev/kmsg; echo only-this", timeout=60)
    assert res == (0, "only-this\n", "")


def test_runs_the_hosts_python_and_cdev(guest: Guest) -> None:
    res = guest.run(
        "python3 -c 'import sys, cdev; print(sys.prefix); print(cdev.__file__)'; cdev --version",
        timeout=300,
    )
    import cdev

    assert res.status == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == sys.prefix
    assert lines[1] == cdev.__file__
    assert lines[2] == f"cdev {cdev.__version__}"


def test_root_is_read_only_but_guest_has_writable_space(guest: Guest) -> None:
    res = guest.run(
        "echo x > /tmp/w && cat /tmp/w && touch /root/.cdev-guest-probe && echo ok", timeout=60
    )
    assert res == (0, "x\nok\n", "")
    # Writes land in the guest's overlay, never on the host.
    assert not Path("/root/.cdev-guest-probe").exists()


def test_shared_dir_both_ways(guest: Guest) -> None:
    host_file = guest.shared_dir / "from-host.bin"
    payload = os.urandom(100_000)
    host_file.write_bytes(payload)
    res = guest.run(
        f"sha256sum {host_file} | cut -d' ' -f1; "
        f"head -c 4096 /dev/urandom > {guest.shared_dir}/from-guest.bin",
        timeout=60,
    )
    import hashlib

    assert res.status == 0, res.stderr
    assert res.stdout.strip() == hashlib.sha256(payload).hexdigest()
    assert (guest.shared_dir / "from-guest.bin").stat().st_size == 4096


def test_many_commands_in_one_boot_and_concurrency(guest: Guest) -> None:
    procs = [guest.spawn(f"sleep 1; echo {i}", timeout=60) for i in range(8)]
    t0 = time.monotonic()
    results = [p.wait() for p in procs]
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
    assert time.monotonic() - t0 < 30


def test_timeout_kills_the_command_and_the_guest_survives(guest: Guest) -> None:
    with pytest.raises(GuestTimeout) as info:
        guest.run("echo started; sleep 600", timeout=2)
    assert info.value.result.stdout == b"started\n"
    assert guest.run("echo alive", timeout=60).stdout == "alive\n"


def test_background_process_with_stdin(guest: Guest) -> None:
    proc = guest.spawn("tr a-z A-Z", keep_stdin=True, timeout=60)
    assert proc.pid
    proc.write("hello ")
    proc.write(b"guest\n")
    proc.close_stdin()
    assert proc.wait(timeout=60) == (0, "HELLO GUEST\n", "")


def test_port_forward_reaches_a_guest_listener(guest: Guest) -> None:
    server = guest.spawn(
        [
            "python3",
            "-c",
            "import socket\n"
            "s = socket.create_server(('0.0.0.0', 7000))\n"
            "print('listening', flush=True)\n"
            "c, _ = s.accept()\n"
            "c.sendall(c.recv(100).upper())\n"
            "c.close()\n",
        ],
        timeout=120,
    )
    port = guest.host_port(7000)
    deadline = time.monotonic() + 90
    answer = b""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(b"ping from host")
                answer = c.recv(100)
            if answer:
                break
        except OSError:
            pass
        # slirp accepts before the guest listens and then drops the connection: retry.
        time.sleep(0.5)
    assert answer == b"PING FROM HOST"
    res = server.wait(timeout=120)
    assert res.status == 0, res.stderr


def test_guest_reaches_a_host_listener_through_slirp(guest: Guest) -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        srv.settimeout(120)
        client = guest.spawn(
            [
                "python3",
                "-c",
                f"import socket; c = socket.create_connection(('10.0.2.2', {port}), timeout=60); "
                "c.sendall(b'from guest'); print(c.recv(100).decode())",
            ],
            timeout=120,
        )
        conn, _ = srv.accept()
        with conn:
            assert conn.recv(100) == b"from guest"
            conn.sendall(b"from host")
    assert client.wait(timeout=120) == (0, "from host\n", "")


def test_qemu_pid_is_ours(guest: Guest) -> None:
    fds = os.listdir(f"/proc/{guest.qemu_pid}/fd")
    assert fds
    cmdline = Path(f"/proc/{guest.qemu_pid}/cmdline").read_bytes().split(b"\0")
    assert b"-kernel" in cmdline


def test_module_loaded_and_node_present(guest: Guest) -> None:
    assert guest.module is not None, f"our module did not build: {guest.module_build_error}"
    assert not guest.module_error, f"insmod failed in the guest: {guest.module_error}"
    res = guest.run("grep -w virtio_cryptodev /proc/modules", timeout=60)
    assert res.status == 0, "virtio_cryptodev is not loaded in the guest"
    assert guest.cryptodev, "this QEMU has no virtio-cryptodev-pci device"
    res = guest.run("test -c /dev/cryptodev0 && ls -l /dev/cryptodev0", timeout=60)
    assert res.status == 0, "no /dev/cryptodev0 in the guest"


def test_device_requests_reach_the_trace_log(guest: Guest) -> None:
    before = guest.trace_log.read_text() if guest.trace_log.exists() else ""
    res = guest.run(
        ["python3", "-c", "import os; os.close(os.open('/dev/cryptodev0', os.O_RDWR))"],
        timeout=120,
    )
    assert res.status == 0, res.stderr
    deadline = time.monotonic() + 10
    new = ""
    while time.monotonic() < deadline and "virtio_cryptodev_response" not in new:
        time.sleep(0.2)
        new = guest.trace_log.read_text()[len(before) :]
    assert "virtio_cryptodev_request" in new and "virtio_cryptodev_response" in new


LOAD_UNLOAD = """
import os, sys
from typer.testing import CliRunner
from cdev.cli import build_app
from cdev.plugins import load_registry

def loaded():
    return any(l.split()[0] == "virtio_cryptodev" for l in open("/proc/modules"))

app = build_app(load_registry())  # one Python start for both commands: imports are slow in TCG
r = CliRunner().invoke(app, ["kernel", "unload"])
assert r.exit_code == 0 and not loaded(), r.output
assert not os.path.exists("/dev/cryptodev0"), "node left behind"
r = CliRunner().invoke(app, ["kernel", "load"])
assert r.exit_code == 0 and loaded(), r.output
assert os.path.exists("/dev/cryptodev0"), "no node after load"
print("ok")
"""


def test_kernel_load_unload_cycle(guest: Guest) -> None:
    res = guest.run(["python3", "-c", LOAD_UNLOAD], timeout=300)
    assert res == (0, "ok\n", ""), res.stdout + res.stderr


def test_hung_boot_times_out_cleanly(guest: Guest) -> None:
    # The shared guest is up, so every artifact is cached: this only costs the timeout.
    psutil = pytest.importorskip("psutil")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    tmp_before = set(Path(tempfile.gettempdir()).glob("cdev-vm-*"))
    g = Guest(qemu=guest.qemu, module=False, cryptodev=False, accel=guest.accel, boot_timeout=2)
    with pytest.raises(GuestError, match="did not come up within 2 s"):
        g.start()
    after = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()}
    assert after <= before, "a QEMU outlived its failed boot"
    assert set(Path(tempfile.gettempdir()).glob("cdev-vm-*")) <= tmp_before


def test_parse_port() -> None:
    assert parse_port("8000:7000") == (8000, 7000)
    assert parse_port("7000") == (0, 7000)
    for bad in ("x:1", "1:0", "70000:1", ":"):
        with pytest.raises(UsageError):
            parse_port(bad)
