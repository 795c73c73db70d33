"""Where chat text comes from and goes: pipe mode (like nc) or a rich terminal view.

Pipe mode (stdin is not a terminal) writes received messages to stdout, one per line, and
notices to stderr, so ``cdev chat connect HOST:PORT < file > out`` works like nc. On a
terminal, messages are shown with the sender's name and a time stamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from concurrent.futures import CancelledError
from typing import BinaryIO, Protocol

from rich.console import Console
from rich.text import Text

from cdev.chat.framing import MAX_TEXT
from cdev.chat.safe import safe_bytes, safe_text


class ChatUI(Protocol):
    interactive: bool

    def message(self, nick: str | None, text: bytes) -> None: ...
    def notice(self, text: str) -> None: ...


class PipeUI:
    """Messages to stdout (``<nick> text`` in a room, bare text between two peers).

    Messages go out byte for byte (like nc) unless stdout is a terminal; nicknames and
    notices, which may quote peers, are always made safe (stderr is usually a terminal)."""

    interactive = False

    def __init__(self, out: BinaryIO | None = None, err: BinaryIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout.buffer
        self._err = err if err is not None else sys.stderr.buffer
        self._out_tty = _isatty(self._out)

    def message(self, nick: str | None, text: bytes) -> None:
        if self._out_tty:
            text = safe_bytes(text)
        if nick is None:
            line = text + b"\n"
        else:
            line = b"<" + safe_text(nick).encode() + b"> " + text + b"\n"
        self._out.write(line)
        self._out.flush()

    def notice(self, text: str) -> None:
        self._err.write(f"cdev: {safe_text(text)}\n".encode())
        self._err.flush()


def _isatty(f: BinaryIO) -> bool:
    try:
        return f.isatty()
    except (OSError, ValueError):
        return False


class RichUI:
    interactive = True

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(highlight=False, soft_wrap=True)

    def message(self, nick: str | None, text: bytes) -> None:
        line = Text()
        line.append(time.strftime("%H:%M "), style="dim")
        line.append(safe_text(nick or "peer"), style="bold cyan")
        line.append(": ")
        line.append(safe_text(text.decode("utf-8", "replace")))
        self._console.print(line)

    def notice(self, text: str) -> None:
        self._console.print(Text(f"-- {safe_text(text)}", style="italic yellow"))


def pick_ui() -> ChatUI:
    return RichUI() if sys.stdin.isatty() and sys.stdout.isatty() else PipeUI()


class LineSource:
    """Lines from a file descriptor, read in a daemon thread so a blocked read never holds
    up the event loop or its shutdown. ``get()`` returns None at EOF.

    The thread uses ``os.read`` on the raw descriptor: a daemon thread blocked inside a
    buffered ``sys.stdin`` read holds its lock and aborts the interpreter at exit.
    """

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd if fd is not None else sys.stdin.fileno()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, name="cdev-stdin", daemon=True).start()

    def _put(self, item: bytes | None) -> None:
        coro = self._queue.put(item)
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:
            coro.close()  # the loop is gone (chat over): nobody will read it, no warning
            raise
        fut.result()  # back-pressure: the reader thread waits while the queue is full

    def _emit(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r")
        # Longer lines are sent as several messages (documented).
        for i in range(0, max(len(line), 1), MAX_TEXT):
            self._put(line[i : i + MAX_TEXT])

    def _run(self) -> None:
        pending = b""
        try:
            while chunk := os.read(self._fd, 65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._emit(raw)
                while len(pending) > MAX_TEXT:  # a huge line without newline: do not hoard it
                    self._put(pending[:MAX_TEXT])
                    pending = pending[MAX_TEXT:]
            if pending:
                self._emit(pending)
        except (OSError, ValueError, RuntimeError, CancelledError):
            pass  # stdin closed under us, or the loop is gone: treat as EOF
        with contextlib.suppress(RuntimeError, CancelledError):
            self._put(None)

    async def get(self) -> bytes | None:
        return await self._queue.get()
