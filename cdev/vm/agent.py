"""The guest agent: runs commands for the host over a virtio-serial port.

This file runs *inside the guest*, started by ``/init`` with the host's own Python
(``python3 agent.py [PORT_NAME]``); it uses the standard library only and never imports
cdev. The host copies it into the exchange share (see :mod:`cdev.vm.guest`).

Protocol (both ways): a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
Requests carry an ``op``: ``run`` (argv, env, cwd, base64 stdin, timeout, keep_stdin),
``stdin``, ``close_stdin``, ``signal``, ``ping``, ``sync``. Replies: ``hello`` once at
start, ``started`` and ``exit`` for each ``run`` (output base64-encoded, so any bytes
round-trip), ``ok``/``error`` for the rest. Each command runs in its own session
(process group) and thread, so many run at once and a timeout kills the whole group.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any

FRAME = struct.Struct(">I")
DEFAULT_PORT_NAME = "org.cdev.agent"


def find_port(name: str) -> str:
    """The /dev/vportNpM node of the virtio-serial port called ``name``."""
    for _ in range(200):
        for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
            with open(name_file) as f:
                if f.read().strip() == name:
                    dev = "/dev/" + name_file.split("/")[-2]
                    if os.path.exists(dev):
                        return dev
        time.sleep(0.05)
    raise SystemExit("cdev agent: no virtio port " + name)


class Agent:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.wlock = threading.Lock()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        data = FRAME.pack(len(data)) + data
        with self.wlock:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]

    def read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            b = os.read(self.fd, min(n, 1 << 20))
            if not b:
                time.sleep(0.05)  # host side not connected (yet): the port reads as EOF
                continue
            chunks.append(b)
            n -= len(b)
        return b"".join(chunks)

    def run(self, req: dict[str, Any]) -> None:
        rid = req["id"]
        argv = req["argv"]
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            p = subprocess.Popen(
                argv,
                cwd=req.get("cwd") or "/",
                env=req.get("env"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            msg = f"cdev agent: {argv[0]}: {exc.strerror}\n"
            self.send(
                {
                    "id": rid,
                    "type": "exit",
                    "status": 127,
                    "stdout": "",
                    "timed_out": False,
                    "stderr": base64.b64encode(msg.encode()).decode(),
                }
            )
            return
        assert p.stdin is not None and p.stdout is not None and p.stderr is not None
        self.procs[rid] = p
        self.send({"id": rid, "type": "started", "pid": p.pid})
        readers = [
            threading.Thread(target=_pump, args=(p.stdout, out), daemon=True),
            threading.Thread(target=_pump, args=(p.stderr, err), daemon=True),
        ]
        for t in readers:
            t.start()
        data = base64.b64decode(req.get("input") or "")
        keep = bool(req.get("keep_stdin"))
        if data or not keep:
            try:
                if data:
                    p.stdin.write(data)
                    p.stdin.flush()
                if not keep:
                    p.stdin.close()
            except OSError:
                pass
        timed_out = False
        try:
            status = p.wait(timeout=req.get("timeout"))
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)
            status = p.wait()
        for t in readers:
            t.join(timeout=2.0)  # a background grandchild may hold the pipes open
        self.procs.pop(rid, None)
        self.send(
            {
                "id": rid,
                "type": "exit",
                "status": status,
                "timed_out": timed_out,
                "stdout": base64.b64encode(b"".join(out)).decode(),
                "stderr": base64.b64encode(b"".join(err)).decode(),
            }
        )

    def handle(self, req: dict[str, Any]) -> None:
        op = req.get("op")
        rid = req.get("id")
        if op == "run":
            threading.Thread(target=self.run, args=(req,), daemon=True).start()
            return
        p = self.procs.get(req.get("target", -1))
        try:
            if op == "stdin" and p is not None and p.stdin is not None:
                p.stdin.write(base64.b64decode(req["data"]))
                p.stdin.flush()
            elif op == "close_stdin" and p is not None and p.stdin is not None:
                p.stdin.close()
            elif op == "signal" and p is not None:
                os.killpg(p.pid, int(req["signal"]))
            elif op == "sync":
                os.sync()
            self.send({"id": rid, "type": "ok"})
        except (OSError, ValueError, KeyError) as exc:
            self.send({"id": rid, "type": "error", "error": str(exc)})

    def hello(self) -> None:
        module = ""
        try:
            with open("/tmp/.cdev-module") as f:
                module = f.read().strip()
        except OSError:
            pass
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        self.send(
            {
                "id": 0,
                "type": "hello",
                "uptime": uptime,
                "module_error": module,
                "release": os.uname().release,
                "pid": os.getpid(),
            }
        )

    def serve(self) -> None:
        self.hello()
        while True:
            (n,) = FRAME.unpack(self.read_exact(FRAME.size))
            self.handle(json.loads(self.read_exact(n)))


def _pump(stream: IO[bytes], sink: list[bytes]) -> None:
    read1 = getattr(stream, "read1", stream.read)
    while True:
        b = read1(65536)
        if not b:
            break
        sink.append(b)


def main(argv: list[str]) -> None:
    name = argv[1] if len(argv) > 1 else DEFAULT_PORT_NAME
    Agent(os.open(find_port(name), os.O_RDWR)).serve()


if __name__ == "__main__":
    main(sys.argv)
