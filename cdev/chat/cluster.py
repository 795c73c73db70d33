"""A local NATS cluster of real ``nats-server`` processes, for trying and testing bus rooms.

Every server listens on 127.0.0.1 with a client port, a route port and a monitoring port; all
are given every route URL, and :meth:`LocalCluster.start` waits until each server reports a
route to every other one (``/routez``), so a message published on one reaches subscribers on
all. Servers started with ``die_with_parent`` get SIGTERM from the kernel when the process
that started them exits, so a crashed test run leaves none behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdev.errors import CdevError, UnavailableError

PR_SET_PDEATHSIG = 1
NAME = "cdev"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nats_server() -> str:
    path = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None
    )
    if path is None:
        raise UnavailableError("nats-server is not installed (Debian: apt-get install nats-server)")
    return path


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel stops the server with its parent.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Node:
    port: int
    route_port: int
    monitor_port: int
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class LocalCluster:
    size: int = 3
    die_with_parent: bool = True
    log_dir: Path | None = None
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The server list as the nats transport takes it, without the room."""
        return "nats://" + ",".join(n.url for n in self.nodes)

    def start(self, timeout: float = 20.0, ports: list[int] | None = None) -> None:
        binary = nats_server()
        if ports is not None and len(ports) != self.size:
            raise CdevError(f"need {self.size} client ports, got {len(ports)}")
        self.nodes = [
            Node(ports[i] if ports else free_port(), free_port(), free_port())
            for i in range(self.size)
        ]
        routes = ",".join(f"nats://127.0.0.1:{n.route_port}" for n in self.nodes)
        try:
            for i, node in enumerate(self.nodes):
                self._spawn(binary, i, node, routes)
            self.wait_routes(timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, binary: str, i: int, node: Node, routes: str) -> None:
        cmd = [
            binary,
            "-a", "127.0.0.1", "-p", str(node.port), "-m", str(node.monitor_port),
            "-n", f"{NAME}-{i}",
            "--cluster", f"nats://127.0.0.1:{node.route_port}",
            "--cluster_name", NAME,
            "--routes", routes,
        ]  # fmt: skip
        out: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            out = open(self.log_dir / f"nats-{i}.log", "ab")  # noqa: SIM115 (child keeps it)
        try:
            node.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                start_new_session=not self.die_with_parent,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        node.pid = node.proc.pid

    def routes_of(self, node: Node) -> int:
        url = f"http://127.0.0.1:{node.monitor_port}/routez"
        with urllib.request.urlopen(url, timeout=1) as resp:
            data = json.loads(resp.read(1 << 20))
        return int(data.get("num_routes", 0))

    def wait_routes(self, timeout: float, nodes: list[Node] | None = None) -> None:
        """Wait until every live server has a route to every other live one."""
        live = nodes if nodes is not None else [n for n in self.nodes if self.alive(n)]
        deadline = time.monotonic() + timeout
        while True:
            for n in live:
                if n.proc is not None and n.proc.poll() is not None:
                    raise CdevError(f"nats-server on port {n.port} exited ({n.proc.returncode})")
            try:
                if all(self.routes_of(n) >= len(live) - 1 for n in live):
                    return
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise CdevError(f"the NATS cluster did not form routes within {timeout:g} s")
            time.sleep(0.05)

    def alive(self, node: Node) -> bool:
        if node.proc is not None:
            return node.proc.poll() is None
        return _is_nats_server(node.pid)

    def kill(self, index: int) -> None:
        """Kill one server at once (SIGKILL): what a crash looks like to its clients."""
        node = self.nodes[index]
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                if node.proc.poll() is None:
                    node.proc.terminate()
            elif _is_nats_server(node.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(5)
            else:
                deadline = time.monotonic() + 5
                while _is_nats_server(node.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)

    # -- a cluster that outlives the command that started it (cdev chat cluster up/down) ----
    def save(self, path: Path) -> None:
        state = [
            {"port": n.port, "route_port": n.route_port, "monitor_port": n.monitor_port,
             "pid": n.pid}
            for n in self.nodes
        ]  # fmt: skip
        path.write_text(json.dumps({"nodes": state}))

    @classmethod
    def load(cls, path: Path) -> LocalCluster:
        try:
            state = json.loads(path.read_text())
            nodes = [
                Node(
                    int(n["port"]), int(n["route_port"]), int(n["monitor_port"]), pid=int(n["pid"])
                )
                for n in state["nodes"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CdevError(f"no usable cluster state in {path}: {exc}") from None
        return cls(size=len(nodes), die_with_parent=False, nodes=nodes)


def _is_nats_server(pid: int) -> bool:
    # Never signal a recycled pid: only a process that still is a nats-server.
    if pid <= 0:
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe) == "nats-server"
