"""Boot a Debian guest with our QEMU, device and module, and run commands in it.

One boot serves many commands. The guest's /init (:mod:`cdev.vm.initramfs`) chroots into
the host's root (shared read-only over virtio-9p, with a tmpfs overlay) and starts a small
agent with the host's own Python. The agent speaks length-prefixed JSON frames over a
virtio-serial port that QEMU connects to a Unix socket of ours; command output travels
base64-encoded inside those frames, so binary output and kernel messages (which go to the
serial console, logged to ``console.log``) can never be confused.

Example::

    with Guest(ports=[(0, 7000)]) as g:
        status, out, err = g.run("cdev session info --provider virtio", timeout=60)
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cdev.errors import CdevError, UnavailableError
from cdev.vm.guest_kernel import GuestKernel, ensure_kernel

ProgressFn = Callable[[str, float | None], None]
Command = str | Sequence[str]

QEMU_ENV = "CDEV_QEMU"
ACCEL_ENV = "CDEV_ACCEL"
CRYPTODEV_DEVICE = "virtio-cryptodev-pci"
AGENT_PORT_NAME = "org.cdev.agent"
GUEST_SLACK = 30.0  # extra seconds the host waits for the agent beyond a command's timeout
_FRAME = struct.Struct(">I")
MAX_FRAME = 256 << 20

# Upstream paravirtual crypto, for side-by-side runs: Guest(extra_args=UPSTREAM_VIRTIO_CRYPTO).
UPSTREAM_VIRTIO_CRYPTO: tuple[str, ...] = (
    "-object",
    "cryptodev-backend-builtin,id=cdevupstream0",
    "-device",
    "virtio-crypto-pci,id=crypto0,cryptodev=cdevupstream0",
)

AGENT_SOURCE = r"""
# cdev guest agent: length-prefixed JSON frames over a virtio-serial port.
import base64, glob, json, os, signal, struct, subprocess, sys, threading, time

FRAME = struct.Struct(">I")
PORT_NAME = sys.argv[1] if len(sys.argv) > 1 else "org.cdev.agent"


def find_port():
    for _ in range(200):
        for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
            with open(name_file) as f:
                if f.read().strip() == PORT_NAME:
                    dev = "/dev/" + name_file.split("/")[-2]
                    if os.path.exists(dev):
                        return dev
        time.sleep(0.05)
    raise SystemExit("cdev agent: no virtio port " + PORT_NAME)


fd = os.open(find_port(), os.O_RDWR)
wlock = threading.Lock()
procs = {}


def send(obj):
    data = json.dumps(obj).encode()
    data = FRAME.pack(len(data)) + data
    with wlock:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]


def read_exact(n):
    chunks = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            time.sleep(0.05)  # host side not connected (yet): the port reads as EOF
            continue
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def pump(stream, sink):
    while True:
        b = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not b:
            break
        sink.append(b)


def run(req):
    rid = req["id"]
    argv = req["argv"]
    env = req.get("env")
    out, err = [], []
    try:
        p = subprocess.Popen(
            argv, cwd=req.get("cwd") or "/", env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
    except OSError as exc:
        msg = "cdev agent: %s: %s\n" % (argv[0], exc.strerror)
        send({"id": rid, "type": "exit", "status": 127, "stdout": "", "timed_out": False,
              "stderr": base64.b64encode(msg.encode()).decode()})
        return
    procs[rid] = p
    send({"id": rid, "type": "started", "pid": p.pid})
    readers = [threading.Thread(target=pump, args=(p.stdout, out), daemon=True),
               threading.Thread(target=pump, args=(p.stderr, err), daemon=True)]
    for t in readers:
        t.start()
    data = base64.b64decode(req.get("input") or "")
    if data or not req.get("keep_stdin"):
        try:
            if data:
                p.stdin.write(data)
                p.stdin.flush()
            if not req.get("keep_stdin"):
                p.stdin.close()
        except OSError:
            pass
    timeout = req.get("timeout")
    timed_out = False
    try:
        status = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        status = p.wait()
    for t in readers:
        t.join(timeout=2.0)  # a background grandchild may hold the pipes open
    procs.pop(rid, None)
    send({"id": rid, "type": "exit", "status": status, "timed_out": timed_out,
          "stdout": base64.b64encode(b"".join(out)).decode(),
          "stderr": base64.b64encode(b"".join(err)).decode()})


def handle(req):
    op = req.get("op")
    rid = req.get("id")
    if op == "run":
        threading.Thread(target=run, args=(req,), daemon=True).start()
        return
    p = procs.get(req.get("target"))
    try:
        if op == "stdin" and p is not None:
            p.stdin.write(base64.b64decode(req["data"]))
            p.stdin.flush()
        elif op == "close_stdin" and p is not None:
            p.stdin.close()
        elif op == "signal" and p is not None:
            os.killpg(p.pid, int(req["signal"]))
        elif op == "ping":
            pass
        elif op == "sync":
            os.sync()
        send({"id": rid, "type": "ok"})
    except (OSError, ValueError) as exc:
        send({"id": rid, "type": "error", "error": str(exc)})


def hello():
    module = ""
    try:
        with open("/tmp/.cdev-module") as f:
            module = f.read().strip()
    except OSError:
        pass
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    send({"id": 0, "type": "hello", "uptime": uptime, "module_error": module,
          "release": os.uname().release, "pid": os.getpid()})


hello()
while True:
    (n,) = FRAME.unpack(read_exact(FRAME.size))
    handle(json.loads(read_exact(n)))
"""


class RunResult(NamedTuple):
    """A finished guest command: ``status, stdout, stderr = guest.run(...)``."""

    status: int
    stdout: str
    stderr: str


class RawResult(NamedTuple):
    status: int
    stdout: bytes
    stderr: bytes


class GuestError(CdevError):
    """The guest failed to boot, hung, or stopped answering."""


class GuestTimeout(GuestError):
    """A guest command ran past its timeout (it was killed); partial output is attached."""

    def __init__(self, message: str, result: RawResult) -> None:
        super().__init__(message)
        self.result = result


def _argv(cmd: Command) -> list[str]:
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", cmd]
    argv = [str(a) for a in cmd]
    if not argv:
        raise CdevError("empty guest command")
    return argv


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def resolve_qemu(qemu: Path | str | None = None, progress: ProgressFn | None = None) -> Path:
    """The QEMU binary: explicit path, ``$CDEV_QEMU``, or our build (``ensure_qemu()``)."""
    chosen = qemu or os.environ.get(QEMU_ENV)
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            found = shutil.which(str(chosen))
            if not found:
                raise UnavailableError(f"QEMU binary not found: {chosen}")
            path = Path(found)
        return path.resolve()
    try:
        from cdev.vm import qemu_build
    except ImportError as exc:  # pragma: no cover - only while the build module is missing
        raise UnavailableError(
            f"cannot build QEMU ({exc}); pass --qemu or set {QEMU_ENV}"
        ) from None
    return qemu_build.ensure_qemu(progress)


def firmware_dirs() -> list[Path]:
    try:
        from cdev.vm import qemu_build

        return list(qemu_build.firmware_dirs())
    except ImportError:  # pragma: no cover
        dirs = (Path("/usr/share/seabios"), Path("/usr/share/qemu"))
        return [d for d in dirs if d.is_dir()]


_device_cache: dict[tuple[str, int], str] = {}


def qemu_devices(qemu: Path) -> str:
    """``qemu -device help`` output (cached per binary and mtime)."""
    key = (str(qemu), qemu.stat().st_mtime_ns)
    if key not in _device_cache:
        try:
            proc = subprocess.run(
                [str(qemu), "-nodefaults", "-machine", "none", "-device", "help"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UnavailableError(f"cannot run {qemu}: {exc}") from None
        _device_cache[key] = proc.stdout + proc.stderr
    return _device_cache[key]


def supports_device(qemu: Path, device: str) -> bool:
    return f'name "{device}"' in qemu_devices(qemu)


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    reply: dict[str, Any] | None = None
    guest_pid: int | None = None


class GuestProcess:
    """A command running in the background in the guest (see :meth:`Guest.spawn`)."""

    def __init__(self, guest: Guest, rid: int, pending: _Pending, argv: list[str]) -> None:
        self._guest = guest
        self._rid = rid
        self._pending = pending
        self.argv = argv

    @property
    def pid(self) -> int | None:
        """The guest-side pid, once started."""
        self._pending.started.wait(timeout=GUEST_SLACK)
        return self._pending.guest_pid

    def poll(self) -> int | None:
        reply = self._pending.reply
        return int(reply["status"]) if reply and reply.get("type") == "exit" else None

    def write(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self._guest._control("stdin", self._rid, data=base64.b64encode(raw).decode())

    def close_stdin(self) -> None:
        self._guest._control("close_stdin", self._rid)

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Signal the process group in the guest."""
        if self.poll() is None:
            self._guest._control("signal", self._rid, signal=int(sig))

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait_raw(self, timeout: float | None = None) -> RawResult:
        return self._guest._await(self._rid, self._pending, timeout, self.argv)

    def wait(self, timeout: float | None = None) -> RunResult:
        raw = self.wait_raw(timeout)
        return RunResult(raw.status, _text(raw.stdout), _text(raw.stderr))


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


class Guest:
    """A booted guest. Use as a context manager; QEMU dies and temp files go on exit.

    ``ports`` are ``(host_port, guest_port)`` pairs forwarded on 127.0.0.1 (host port 0
    picks a free one: see :meth:`host_port`). ``cryptodev`` adds ``-device
    virtio-cryptodev-pci`` (None: when the QEMU binary has it). ``module`` is our .ko to
    insmod at boot (None: build ``kernel/`` if needed; False: none). ``extra_args`` go to
    QEMU as they are (e.g. :data:`UPSTREAM_VIRTIO_CRYPTO`), ``kernel_args`` are appended to
    the guest kernel's command line, ``trace`` are QEMU trace-event patterns (e.g.
    ``"virtio_cryptodev_*"``) logged to :attr:`trace_log`.
    """

    def __init__(
        self,
        *,
        qemu: Path | str | None = None,
        kernel_version: str | None = None,
        ports: Sequence[tuple[int, int]] = (),
        cryptodev: bool | None = None,
        module: Path | str | bool | None = None,
        module_args: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        kernel_args: Sequence[str] = (),
        trace: Sequence[str] = (),
        memory_mb: int = 1024,
        cpus: int = 2,
        accel: str | None = None,
        boot_timeout: float = 180.0,
        progress: ProgressFn | None = None,
        verbose: bool = False,
    ) -> None:
        self._qemu_arg = qemu
        self._kernel_version = kernel_version
        self._ports_req = list(ports)
        self._cryptodev_req = cryptodev
        self._module_req = module
        self.module_args = list(module_args)
        self.extra_args = list(extra_args)
        self.kernel_args = list(kernel_args)
        self.trace = list(trace)
        self.memory_mb = memory_mb
        self.cpus = cpus
        self._accel_req = accel
        self.boot_timeout = boot_timeout
        self._progress = progress
        self.verbose = verbose

        self.qemu: Path | None = None
        self.kernel: GuestKernel | None = None
        self.module: Path | None = None
        self.accel = ""
        self.ports: dict[int, int] = {}  # guest port -> host port
        self.cryptodev = False
        self.boot_seconds = 0.0
        self.guest_uptime = 0.0
        self.module_error = ""
        self.module_build_error = ""
        self.release = ""
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._next_id = 1
        self._dead: str | None = None
        self._hello = threading.Event()
        self._hello_msg: dict[str, Any] = {}

    # -- paths ---------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._tmp is None:
            raise GuestError("guest not started")
        return self._tmp

    @property
    def shared_dir(self) -> Path:
        """A host directory the guest sees, writable, at the same absolute path."""
        return self.workdir / "share"

    @property
    def console_log(self) -> Path:
        """The guest's serial console (kernel messages, /init's errors)."""
        return self.workdir / "console.log"

    @property
    def trace_log(self) -> Path:
        """QEMU's trace output (``-D``), when ``trace`` patterns were given."""
        return self.workdir / "trace.log"

    @property
    def qmp_socket(self) -> Path:
        """QEMU's QMP control socket (a Unix socket; e.g. for the ``qemu.qmp`` client)."""
        return self.workdir / "qmp.sock"

    @property
    def qemu_pid(self) -> int:
        if self._proc is None:
            raise GuestError("guest not started")
        return self._proc.pid

    def host_port(self, guest_port: int) -> int:
        """The 127.0.0.1 port on the host that reaches ``guest_port`` in the guest."""
        try:
            return self.ports[guest_port]
        except KeyError:
            raise CdevError(f"guest port {guest_port} is not forwarded") from None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _say(self, text: str, fraction: float | None = None) -> None:
        if self._progress:
            self._progress(text, fraction)

    def prepare(self) -> None:
        """Build or fetch whatever is missing: QEMU, guest kernel, our module, initramfs."""
        from cdev.vm import initramfs, kvm, module_build

        self.qemu = resolve_qemu(self._qemu_arg, self._progress)
        self.kernel = ensure_kernel(self._kernel_version, self._progress)
        if self._module_req is None:
            # Default: a module that does not build must not stop the guest from booting;
            # module_error says why (and tests that need the module fail on it).
            try:
                self.module = module_build.ensure_module(self.kernel.version, self._progress)
            except CdevError as exc:
                self.module = None
                self.module_build_error = str(exc)
                self._say(f"no module: {exc}", None)
        elif self._module_req is False:
            self.module = None
        elif self._module_req is True:
            self.module = module_build.ensure_module(self.kernel.version, self._progress)
        else:
            self.module = Path(self._module_req).resolve()
            if not self.module.is_file():
                raise CdevError(f"module not found: {self.module}")
        self._say("initramfs", None)
        self.initrd = initramfs.ensure_initramfs(self.kernel)
        if self._cryptodev_req is None:
            self.cryptodev = supports_device(self.qemu, CRYPTODEV_DEVICE)
        else:
            self.cryptodev = self._cryptodev_req
            if self.cryptodev and not supports_device(self.qemu, CRYPTODEV_DEVICE):
                raise UnavailableError(f"{self.qemu} has no {CRYPTODEV_DEVICE} device")
        self.accel = (
            self._accel_req
            or os.environ.get(ACCEL_ENV)
            or kvm.choose_accel(self.qemu, self.kernel, self._progress, firmware_dirs())
        )
        if self.accel not in ("kvm", "tcg"):
            raise CdevError(f"unknown accelerator {self.accel!r} (kvm or tcg)")

    def qemu_argv(self) -> list[str]:
        assert self.qemu is not None and self.kernel is not None
        tmp = self.workdir
        hostfwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in sorted(self.ports.items()))
        argv = [str(self.qemu)]
        for d in firmware_dirs():
            argv += ["-L", str(d)]
        accel = "kvm" if self.accel == "kvm" else "tcg,thread=multi"
        argv += [
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-no-reboot",
            "-machine", "pc",
            "-accel", accel,
            "-cpu", "host" if self.accel == "kvm" else "max",
            "-smp", str(self.cpus),
            "-m", str(self.memory_mb),
            "-kernel", str(self.kernel.vmlinuz),
            "-initrd", str(self.initrd),
            "-append", self._cmdline(),
            "-chardev", f"file,id=con0,path={tmp / 'console.log'}",
            "-serial", "chardev:con0",
            "-fsdev", "local,id=fsroot,path=/,readonly=on,security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=fsroot,mount_tag=cdevroot",
            "-fsdev", f"local,id=fsx,path={self.shared_dir},security_model=none",
            "-device", "virtio-9p-pci,fsdev=fsx,mount_tag=cdevxchg",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=agent0,path={tmp / 'agent.sock'}",
            "-device", f"virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT_NAME}",
            "-netdev", f"user,id=net0{hostfwd}",
            "-device", "virtio-net-pci,netdev=net0",
            "-qmp", f"unix:{tmp / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip
        if self.cryptodev:
            argv += ["-device", CRYPTODEV_DEVICE]
        for pattern in self.trace:
            argv += ["-trace", f"enable={pattern}"]
        if self.trace:
            # Timestamps let cdev vq-trace measure per-request latency.
            argv += ["-D", str(self.trace_log), "-msg", "timestamp=on"]
        return argv + self.extra_args

    def _cmdline(self) -> str:
        parts = ["console=ttyS0", "panic=-1", "rdinit=/init", "tsc=reliable", "no_timer_check"]
        parts += self.kernel_args
        parts.append("loglevel=7" if self.verbose else "quiet loglevel=4")
        return " ".join(parts)

    def _boot_env(self) -> str:
        venv_bin = Path(sys.prefix) / "bin"
        env = {
            "CDEV_SHARE": str(self.shared_dir),
            "CDEV_PYTHON": sys.executable,
            "CDEV_MODULE": str(self.module or ""),
            "CDEV_MODULE_ARGS": " ".join(self.module_args),
            "CDEV_VENV_BIN": str(venv_bin),
            # What the guest runs must stay visible under its own tmpfs mounts.
            "CDEV_HOST_PATHS": ":".join(
                str(p)
                for p in (
                    _project_root(),
                    Path(sys.prefix),
                    Path(os.path.realpath(sys.executable)).parent,
                )
            ),
        }
        for k, v in env.items():
            if any(c in v for c in "\n'\"$`\\"):
                raise CdevError(f"unsupported character in {k}: {v!r}")
        return "".join(f"{k}='{v}'\n" for k, v in env.items())

    def start(self) -> Guest:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="cdev-vm-"))
        self.prepare()
        assert self.qemu is not None
        for s in ("share", "share/.cdev"):
            (self.workdir / s).mkdir()
        os.chmod(self.shared_dir, 0o1777)
        (self.shared_dir / ".cdev" / "boot.env").write_text(self._boot_env())
        (self.shared_dir / ".cdev" / "agent.py").write_text(AGENT_SOURCE)
        for host, guest in self._ports_req:
            self.ports[int(guest)] = int(host) or _free_port()

        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.workdir / "agent.sock"))
        listener.listen(1)
        argv = self.qemu_argv()
        (self.workdir / "qemu.cmdline").write_text(shlex.join(argv) + "\n")
        self._say(f"booting guest ({self.accel}, {self.cpus} vCPUs)", None)
        t0 = time.monotonic()
        qlog = (self.workdir / "qemu.log").open("wb")
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=qlog,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            listener.close()
            raise UnavailableError(f"cannot run {self.qemu}: {exc.strerror}") from None
        finally:
            qlog.close()
        listener.settimeout(0.2)
        try:
            while self._sock is None:
                try:
                    self._sock, _ = listener.accept()
                except TimeoutError:
                    if self._proc.poll() is not None:
                        raise GuestError(self._death_message("QEMU exited at startup")) from None
                    if time.monotonic() - t0 > 30:
                        raise GuestError("QEMU never connected the agent port") from None
        finally:
            listener.close()
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name="cdev-guest", daemon=True)
        self._reader.start()
        deadline = t0 + self.boot_timeout
        while not self._hello.wait(0.2):
            if self._dead or self._proc.poll() is not None:
                raise GuestError(self._death_message("guest stopped during boot"))
            if time.monotonic() > deadline:
                raise GuestError(
                    self._death_message(f"guest did not come up within {self.boot_timeout:.0f} s")
                )
        self.boot_seconds = time.monotonic() - t0
        self.guest_uptime = float(self._hello_msg.get("uptime", 0.0))
        self.module_error = str(self._hello_msg.get("module_error", ""))
        self.release = str(self._hello_msg.get("release", ""))
        self._say(f"guest up in {self.boot_seconds:.1f} s ({self.accel})", 1.0)

    def _death_message(self, what: str) -> str:
        tail = ""
        for log in (self.workdir / "qemu.log", self.workdir / "console.log"):
            with contextlib.suppress(OSError):
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
                if lines:
                    tail += f" | {log.name}: " + " / ".join(lines[-3:])
        return what + tail

    def close(self) -> None:
        """Stop QEMU (killing it if needed) and remove the temporary files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._dead = self._dead or "guest closed"
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        self._fail_pending()
        if self._tmp is not None and not os.environ.get("CDEV_KEEP_VM"):
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- channel ---------------------------------------------------------------------------
    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while True:
                head = _recv_exact(sock, _FRAME.size)
                (n,) = _FRAME.unpack(head)
                if n > MAX_FRAME:
                    raise GuestError(f"agent frame too large ({n} bytes)")
                msg = json.loads(_recv_exact(sock, n))
                self._dispatch(msg)
        except (OSError, EOFError, ValueError, GuestError) as exc:
            self._dead = self._dead or f"agent channel closed ({exc or type(exc).__name__})"
        self._fail_pending()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "hello":
            self._hello_msg = msg
            self._hello.set()
            return
        with self._lock:
            pending = self._pending.get(int(msg.get("id", -1)))
        if pending is None:
            return
        if kind == "started":
            pending.guest_pid = int(msg["pid"])
            pending.started.set()
            return
        pending.reply = msg
        pending.started.set()
        pending.event.set()

    def _fail_pending(self) -> None:
        with self._lock:
            for p in self._pending.values():
                p.started.set()
                p.event.set()

    def _send(self, msg: dict[str, Any]) -> None:
        if self._dead or self._sock is None:
            raise GuestError(self._dead_reason())
        data = json.dumps(msg).encode()
        with self._send_lock:
            try:
                self._sock.sendall(_FRAME.pack(len(data)) + data)
            except OSError as exc:
                raise GuestError(f"cannot reach the guest agent: {exc}") from None

    def _dead_reason(self) -> str:
        why = self._dead or "guest not started"
        if self._tmp is not None and self._proc is not None and self._proc.poll() is not None:
            return self._death_message(f"QEMU exited ({self._proc.returncode}): {why}")
        return why

    def _new(self) -> tuple[int, _Pending]:
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            pending = _Pending()
            self._pending[rid] = pending
        return rid, pending

    def _control(self, op: str, target: int, **kw: Any) -> None:
        rid, pending = self._new()
        try:
            self._send({"op": op, "id": rid, "target": target, **kw})
            if not pending.event.wait(GUEST_SLACK) or pending.reply is None:
                raise GuestError(f"guest agent did not answer {op}: {self._dead_reason()}")
            if pending.reply.get("type") == "error":
                raise GuestError(f"guest {op} failed: {pending.reply.get('error')}")
        finally:
            with self._lock:
                self._pending.pop(rid, None)

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        venv_bin = str(Path(sys.prefix) / "bin")
        base = {
            "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "VIRTUAL_ENV": sys.prefix,
            "CDEV_IN_GUEST": "1",
        }
        for k in ("CDEV_CACHE_DIR", "CDEV_KERNEL_VERSION"):
            if k in os.environ:
                base[k] = os.environ[k]
        if env:
            base.update(env)
        return base

    def spawn(
        self,
        cmd: Command,
        *,
        timeout: float | None = None,
        input: bytes | str | None = None,
        keep_stdin: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> GuestProcess:
        """Start ``cmd`` in the guest and return at once (a str runs through ``/bin/sh -c``).

        The guest kills it after ``timeout`` seconds (None: never). With ``keep_stdin`` its
        stdin stays open for :meth:`GuestProcess.write`. cwd defaults to the project root.
        """
        argv = _argv(cmd)
        raw_in = input.encode() if isinstance(input, str) else (input or b"")
        rid, pending = self._new()
        msg = {
            "op": "run",
            "id": rid,
            "argv": argv,
            "env": self._env(env),
            "cwd": str(cwd or _project_root()),
            "timeout": timeout,
            "input": base64.b64encode(raw_in).decode(),
            "keep_stdin": keep_stdin,
        }
        try:
            self._send(msg)
        except BaseException:
            with self._lock:
                self._pending.pop(rid, None)
            raise
        return GuestProcess(self, rid, pending, argv)

    popen = spawn  # subprocess-style name

    def _await(
        self, rid: int, pending: _Pending, timeout: float | None, argv: list[str]
    ) -> RawResult:
        wait = None if timeout is None else timeout + GUEST_SLACK
        ok = pending.event.wait(wait)
        reply = pending.reply
        if not ok or reply is None or reply.get("type") != "exit":
            if ok or self._dead:
                raise GuestError(f"{shlex.join(argv)}: {self._dead_reason()}")
            raise GuestError(
                f"{shlex.join(argv)}: guest agent gave no answer {wait:.0f} s "
                "after the command's timeout; the guest looks hung "
                f"(console: {self.console_log})"
            )
        with self._lock:
            self._pending.pop(rid, None)
        raw = RawResult(
            int(reply["status"]),
            base64.b64decode(reply.get("stdout") or ""),
            base64.b64decode(reply.get("stderr") or ""),
        )
        if reply.get("timed_out"):
            raise GuestTimeout(f"{shlex.join(argv)}: timed out in the guest after {timeout} s", raw)
        return raw

    def run_bytes(
        self,
        cmd: Command,
        timeout: float = 120.0,
        *,
        input: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> RawResult:
        """Like :meth:`run`, with stdout and stderr as bytes."""
        proc = self.spawn(cmd, timeout=timeout, input=input, env=env, cwd=cwd)
        return proc.wait_raw(timeout)

    def run(
        self,
        cmd: Command,
        timeout: float = 120.0,
        *,
        input: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        check: bool = False,
    ) -> RunResult:
        """Run ``cmd`` in the guest and return ``(status, stdout, stderr)`` as text.

        A negative status is the signal that ended it. Raises :class:`GuestTimeout` when it
        outlives ``timeout`` and, with ``check``, :class:`GuestError` on a non-zero status.
        """
        raw = self.run_bytes(cmd, timeout, input=input, env=env, cwd=cwd)
        res = RunResult(raw.status, _text(raw.stdout), _text(raw.stderr))
        if check and res.status != 0:
            last = (res.stderr.strip().splitlines() or ["no stderr"])[-1]
            raise GuestError(f"{shlex.join(_argv(cmd))}: exit {res.status}: {last}")
        return res

    def ping(self) -> None:
        self._control("ping", 0)


def _die_with_parent() -> None:
    """In the QEMU child: get SIGKILL when the thread that started it dies (no orphans
    eating the CPUs when a test run is killed); a no-op where prctl is unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("agent closed the channel")
        buf += chunk
    return bytes(buf)


@contextlib.contextmanager
def booted(**kwargs: Any) -> Iterator[Guest]:
    """``with booted(ports=[(0, 7000)]) as g: ...`` — same as ``with Guest(...) as g``."""
    with Guest(**kwargs) as g:
        yield g
