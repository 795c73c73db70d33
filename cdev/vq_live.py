"""Attach to a running QEMU: switch the device's trace events on over QMP, read them,
switch them back when done.

QEMU built with the ``log`` trace backend writes enabled events to its log (``-D FILE``;
stderr without one). Guests started by cdev's harness always have a ``-D`` file and
``-msg timestamp=on`` and are registered by name (:mod:`cdev.vm.registry`), so attaching
reads that file from its current end. For any other QEMU, attaching points its log at a
private file of ours with the monitor's ``logfile`` command first (QMP has no query for the
old name, so it cannot be put back: say so). Timestamps need ``-msg timestamp=on`` at
QEMU's start; without them lines are stamped when read (latency then means little).

The previous state of every event is restored on detach, so attaching to a guest that
traces from boot leaves it tracing.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cdev.errors import CdevError, UsageError
from cdev.qmp import Qmp, QmpError, check_socket, peer_pid, process_alive
from cdev.vm import registry
from cdev.vq_trace import EVENT_PREFIX, read_lines

PATTERN = f"{EVENT_PREFIX}*"


@dataclass(frozen=True)
class Target:
    qmp: Path
    pid: int  # QEMU's
    log: Path | None  # its -D file, when known
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or str(self.qmp)


def resolve(spec: str) -> Target:
    """``spec`` is a VM name (``cdev vm list``) or the path of a QMP Unix socket."""
    if "/" not in spec and not os.path.exists(spec):
        rec = registry.lookup(registry.check_name(spec))
        qmp = check_socket(rec.qmp)
        log = Path(rec.trace_log) if rec.trace_log else None
        return Target(qmp, rec.pid, log, rec.name)
    qmp = check_socket(spec)
    pid = peer_pid(qmp)
    if pid is None:
        raise QmpError(f"{qmp}: nothing listens there (QEMU exited?)")
    for rec in registry.running():
        if rec.pid == pid and rec.trace_log:
            return Target(qmp, pid, Path(rec.trace_log), rec.name)
    return Target(qmp, pid, None)


class Attachment:
    """``with Attachment(target) as a: for line in a.lines(): ...``

    Entering switches the events matching ``pattern`` on; leaving restores each one's
    previous state (when QEMU still runs). The QMP connection is held only for those two
    moments, so ``cdev session list --attach`` works meanwhile.
    """

    def __init__(self, target: Target, pattern: str = PATTERN, *, timeout: float = 10.0):
        self.target = target
        self.pattern = pattern
        self.timeout = timeout
        self.previous: dict[str, bool] = {}
        self.log: Path | None = target.log
        self.start = 0
        self.redirected = False
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None

    def alive(self) -> bool:
        # QEMU removes its QMP socket on the way out, before the process is gone.
        return process_alive(self.target.pid) and self.target.qmp.exists()

    def __enter__(self) -> Attachment:
        with Qmp(self.target.qmp, self.timeout) as q:
            self.previous = q.trace_states(self.pattern)
            if not self.previous:
                raise UsageError(
                    f"{self.target.label}: this QEMU has no {self.pattern} trace events "
                    "(not built by `cdev qemu build`?)"
                )
            if self.log is None:
                # Private: the directory is ours alone (0700), so no one can swap the file.
                self._tmpdir = tempfile.TemporaryDirectory(prefix="cdev-vq-")
                self.log = Path(self._tmpdir.name) / "qemu.log"
                q.hmp(f"logfile {self.log}")
                self.redirected = True
            try:
                self.start = self.log.stat().st_size
            except FileNotFoundError:
                self.start = 0
            try:
                for name in self.previous:
                    q.set_trace(name, True)
            except BaseException:
                self._restore(q)
                raise
        return self

    def _restore(self, q: Qmp) -> None:
        for name, was in self.previous.items():
            q.set_trace(name, was)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.previous and self.alive():
                with Qmp(self.target.qmp, self.timeout) as q:
                    self._restore(q)
        except CdevError:
            if self.alive():
                raise
        finally:
            if self._tmpdir is not None and not self.alive():
                self._tmpdir.cleanup()

    def lines(self, stop: Callable[[], bool] = lambda: False, poll: float = 0.1) -> Iterator[str]:
        """New log lines until QEMU exits or ``stop()`` says so."""
        assert self.log is not None, "not attached"
        deadline = time.monotonic() + 10
        while not self.log.exists():  # QEMU opens it lazily after a logfile change
            if not self.alive() or stop() or time.monotonic() > deadline:
                return
            time.sleep(poll)

        def going() -> bool:
            return self.alive() and not stop()

        yield from read_lines(self.log, follow=True, poll=poll, start=self.start, alive=going)
