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
import importlib.resources
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cdev.errors import CdevError, UnavailableError
from cdev.qmp import Qmp
from cdev.vm import registry
from cdev.vm.channel import (
    GUEST_SLACK,
    AgentChannel,
    Command,
    GuestError,
    GuestProcess,
    GuestTimeout,
    RawResult,
    RunResult,
    argv_of,
    text,
)
from cdev.vm.guest_kernel import GuestKernel, ProgressFn, ensure_kernel
from cdev.vm.qemu_discovery import (
    CRYPTODEV_DEVICE,
    QEMU_ENV,
    UPSTREAM_VIRTIO_CRYPTO,
    firmware_dirs,
    resolve_qemu,
    supports_device,
)

__all__ = [
    "CRYPTODEV_DEVICE",
    "CRYPTODEV_ID",
    "GUEST_SLACK",
    "QEMU_ENV",
    "UPSTREAM_VIRTIO_CRYPTO",
    "Guest",
    "GuestError",
    "GuestProcess",
    "GuestTimeout",
    "RawResult",
    "RunResult",
    "booted",
]

ACCEL_ENV = "CDEV_ACCEL"
AGENT_PORT_NAME = "org.cdev.agent"
# Our device's QEMU id and bus: named, on the i440fx root bus (ACPI PCI hotplug), so that
# it can be unplugged and plugged again at run time (Guest.unplug_device/plug_device).
CRYPTODEV_ID = "cryptodev0"
CRYPTODEV_BUS = "pci.0"
SYSFS_CLASS = "/sys/class/virtio-cryptodev"


def agent_source() -> str:
    """The guest agent (:mod:`cdev.vm.agent`), as the file the guest runs."""
    return importlib.resources.files("cdev.vm").joinpath("agent.py").read_text()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Guest:
    """A booted guest. Use as a context manager; QEMU dies and temp files go on exit.

    ``ports`` are ``(host_port, guest_port)`` pairs forwarded on 127.0.0.1 (host port 0
    picks a free one: see :meth:`host_port`). ``cryptodev`` adds ``-device
    virtio-cryptodev-pci`` (None: when the QEMU binary has it). ``module`` is our .ko to
    insmod at boot (None: build ``kernel/`` if needed; False: none). ``extra_args`` go to
    QEMU as they are (e.g. :data:`UPSTREAM_VIRTIO_CRYPTO`), ``kernel_args`` are appended to
    the guest kernel's command line, ``trace`` are QEMU trace-event patterns (e.g.
    ``"virtio_cryptodev_*"``) logged to :attr:`trace_log` from the start (``cdev vq-trace
    --attach`` switches them at run time). ``name`` registers the running guest (see
    :mod:`cdev.vm.registry`; None: the first free of ``vm``, ``vm2``, ...). Our device
    gets the QEMU id :data:`CRYPTODEV_ID` on a hotpluggable bus: :meth:`unplug_device`
    and :meth:`plug_device` remove and re-add it while the guest runs.
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
        name: str | None = None,
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
        self._name_req = registry.check_name(name) if name else None
        self.record: registry.VmRecord | None = None

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
        self._channel: AgentChannel | None = None

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
        """QEMU's log (``-D``): trace events, once some are enabled (timestamped)."""
        return self.workdir / "trace.log"

    @property
    def qmp_socket(self) -> Path:
        """QEMU's QMP control socket (a Unix socket; e.g. for the ``qemu.qmp`` client)."""
        return self.workdir / "qmp.sock"

    @property
    def name(self) -> str:
        """The name this running guest is registered under (``--attach NAME``)."""
        if self.record is None:
            raise GuestError("guest not started")
        return self.record.name

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
            argv += ["-device", f"{CRYPTODEV_DEVICE},id={CRYPTODEV_ID},bus={CRYPTODEV_BUS}"]
        for pattern in self.trace:
            argv += ["-trace", f"enable={pattern}"]
        # Always: events switched on later over QMP land in a known file, timestamped so
        # that cdev vq-trace can measure per-request latency.
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
        (self.shared_dir / ".cdev" / "agent.py").write_text(agent_source())
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
        self.record = registry.register(
            self._name_req,
            pid=self._proc.pid,
            qmp=self.qmp_socket,
            trace_log=self.trace_log,
            workdir=self.workdir,
        )
        listener.settimeout(0.2)
        sock: socket.socket | None = None
        try:
            while sock is None:
                try:
                    sock, _ = listener.accept()
                except TimeoutError:
                    if self._proc.poll() is not None:
                        raise GuestError(self._death_message("QEMU exited at startup")) from None
                    if time.monotonic() - t0 > 30:
                        raise GuestError("QEMU never connected the agent port") from None
        finally:
            listener.close()
        sock.settimeout(None)
        self._channel = AgentChannel(sock, self._dead_reason, f" (console: {self.console_log})")
        deadline = t0 + self.boot_timeout
        while not self._channel.hello.wait(0.2):
            if self._channel.dead or self._proc.poll() is not None:
                raise GuestError(self._death_message("guest stopped during boot"))
            if time.monotonic() > deadline:
                raise GuestError(
                    self._death_message(f"guest did not come up within {self.boot_timeout:.0f} s")
                )
        self.boot_seconds = time.monotonic() - t0
        hello = self._channel.hello_msg
        self.guest_uptime = float(hello.get("uptime", 0.0))
        self.module_error = str(hello.get("module_error", ""))
        self.release = str(hello.get("release", ""))
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
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        if self.record is not None:
            with contextlib.suppress(CdevError):
                registry.unregister(self.record)
        if self._tmp is not None and not os.environ.get("CDEV_KEEP_VM"):
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- commands ------------------------------------------------------------------------
    def _dead_reason(self, why: str = "guest not started") -> str:
        if self._tmp is not None and self._proc is not None and self._proc.poll() is not None:
            return self._death_message(f"QEMU exited ({self._proc.returncode}): {why}")
        return why

    @property
    def channel(self) -> AgentChannel:
        if self._channel is None:
            raise GuestError("guest not started")
        return self._channel

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
        raw_in = input.encode() if isinstance(input, str) else (input or b"")
        return self.channel.spawn(
            {
                "argv": argv_of(cmd),
                "env": self._env(env),
                "cwd": str(cwd or _project_root()),
                "timeout": timeout,
                "input": base64.b64encode(raw_in).decode(),
                "keep_stdin": keep_stdin,
            }
        )

    popen = spawn  # subprocess-style name

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
        res = RunResult(raw.status, text(raw.stdout), text(raw.stderr))
        if check and res.status != 0:
            last = (res.stderr.strip().splitlines() or ["no stderr"])[-1]
            raise GuestError(f"{shlex.join(argv_of(cmd))}: exit {res.status}: {last}")
        return res

    def ping(self) -> None:
        self.channel.control("ping", 0)

    # -- hotplug ---------------------------------------------------------------------------
    def _device_present(self, q: Qmp) -> bool:
        return any(p.get("name") == CRYPTODEV_ID for p in q.qom_list("/machine/peripheral"))

    def unplug_device(self, timeout: float = 60.0) -> float:
        """Hot-unplug our device (QMP ``device_del``) and wait until QEMU has removed it,
        which it does once the guest has let go of it (ACPI eject). Returns the seconds
        it took. Raises :class:`GuestError` when it is still there after ``timeout``."""
        if not self.cryptodev:
            raise GuestError(f"this guest has no {CRYPTODEV_DEVICE}")
        t0 = time.monotonic()
        with Qmp(self.qmp_socket) as q:
            q.execute("device_del", {"id": CRYPTODEV_ID})
            # Polled, not the DEVICE_DELETED event: the answer is the same and a poll
            # cannot miss an event sent before we listened.
            while self._device_present(q):
                if time.monotonic() - t0 > timeout:
                    raise GuestError(
                        f"{CRYPTODEV_ID} still present {timeout:.0f} s after device_del "
                        "(the guest did not release it)"
                    )
                time.sleep(0.05)
        return time.monotonic() - t0

    def plug_device(self, timeout: float = 60.0, wait_node: bool = True) -> float:
        """Hot-plug our device again (QMP ``device_add``, same id and bus) and, with
        ``wait_node``, wait until the guest's driver has bound it and its node exists.
        Returns the seconds it took."""
        if not self.cryptodev:
            raise GuestError(f"this guest has no {CRYPTODEV_DEVICE}")
        t0 = time.monotonic()
        with Qmp(self.qmp_socket) as q:
            q.execute(
                "device_add",
                {"driver": CRYPTODEV_DEVICE, "id": CRYPTODEV_ID, "bus": CRYPTODEV_BUS},
            )
        if wait_node:
            # One guest command polling in the guest: cheaper than a round trip per poll.
            script = (
                f"i=0; while [ $i -lt {int(timeout * 20)} ]; do "
                f"for d in {SYSFS_CLASS}/cryptodev*; do "
                '[ -e "$d" ] && [ -c "/dev/${d##*/}" ] && exit 0; done; '
                "sleep 0.05; i=$((i+1)); done; exit 1"
            )
            res = self.run(script, timeout=timeout + GUEST_SLACK)
            if res.status != 0:
                raise GuestError(f"no cryptodev node within {timeout:.0f} s of device_add")
        return time.monotonic() - t0


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


@contextlib.contextmanager
def booted(**kwargs: Any) -> Iterator[Guest]:
    """``with booted(ports=[(0, 7000)]) as g: ...`` — same as ``with Guest(...) as g``."""
    with Guest(**kwargs) as g:
        yield g
