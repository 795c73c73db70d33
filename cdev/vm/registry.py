"""Running guests by name, so other commands can find their QMP socket and trace log.

Every guest started by the harness (``cdev vm run``, the tests, the benchmarks) writes
``RUN_DIR/vms/NAME.json`` while it runs; ``cdev vq-trace --attach NAME`` and ``cdev session
list --attach NAME`` read it. ``RUN_DIR`` is ``$CDEV_RUN_DIR``, else
``$XDG_RUNTIME_DIR/cdev``, else ``/tmp/cdev-run-UID``; it must belong to us and be closed to
others, since a record names a socket that controls the VM. A record whose QEMU is gone is
stale and removed on sight.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cdev.errors import CdevError, UsageError

RUN_DIR_ENV = "CDEV_RUN_DIR"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_RECORD = 64 << 10


@dataclass(frozen=True)
class VmRecord:
    name: str
    pid: int  # QEMU's
    qmp: str  # QMP Unix socket
    trace_log: str  # QEMU's log file (-D), "" when none
    workdir: str
    started: float


def run_dir() -> Path:
    env = os.environ.get(RUN_DIR_ENV)
    if env:
        base = Path(env)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "cdev"
    else:
        base = Path("/tmp") / f"cdev-run-{os.getuid()}"
    vms = base / "vms"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        vms.mkdir(mode=0o700, exist_ok=True)
        for d in (base, vms):
            st = d.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
                raise CdevError(f"{d}: not a private directory of ours; set {RUN_DIR_ENV}")
    except OSError as exc:
        raise CdevError(f"cannot use {base}: {exc.strerror}") from None
    return vms


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UsageError(
            f"bad VM name {name!r}: 1-64 of letters, digits, '_', '.', '-' (not first)"
        )
    return name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> VmRecord | None:
    try:
        with path.open("rb") as f:
            data = json.loads(f.read(MAX_RECORD))
        rec = VmRecord(
            name=str(data["name"]),
            pid=int(data["pid"]),
            qmp=str(data["qmp"]),
            trace_log=str(data.get("trace_log") or ""),
            workdir=str(data["workdir"]),
            started=float(data["started"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rec if rec.pid > 0 else None


def register(
    name: str | None, *, pid: int, qmp: Path, trace_log: Path | None, workdir: Path
) -> VmRecord:
    """Record a running guest; without a name, pick ``vm``, ``vm2``, ... (first free)."""
    d = run_dir()
    candidates = [check_name(name)] if name else ["vm"] + [f"vm{i}" for i in range(2, 1000)]
    for cand in candidates:
        rec = VmRecord(cand, pid, str(qmp), str(trace_log or ""), str(workdir), time.time())
        path = d / f"{cand}.json"
        old = _read(path)
        if old is not None and _alive(old.pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Written aside, then linked into place: readers never see half a record, and
        # link() fails if another guest took the name just now.
        tmp = d / f".{cand}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(rec)))
        try:
            os.link(tmp, path)
        except FileExistsError:
            continue
        finally:
            tmp.unlink()
        return rec
    raise UsageError(f"a VM named {name!r} is already running" if name else "no free VM name")


def unregister(rec: VmRecord) -> None:
    path = run_dir() / f"{rec.name}.json"
    cur = _read(path)
    if cur is not None and cur.pid == rec.pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def running() -> list[VmRecord]:
    """Every live record, by name; stale ones are removed."""
    out = []
    for path in sorted(run_dir().glob("[!.]*.json")):
        rec = _read(path)
        if rec is not None and _alive(rec.pid):
            out.append(rec)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return out


def lookup(name: str) -> VmRecord:
    for rec in running():
        if rec.name == name:
            return rec
    names = ", ".join(r.name for r in running()) or "none"
    raise UsageError(f"no running VM named {name!r} (running: {names})")
