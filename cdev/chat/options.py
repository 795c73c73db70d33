"""What a chat endpoint needs to know besides its address."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

from cdev.errors import UsageError
from cdev.provider import Provider

# Letters and digits (Unicode ones too, never controls), '.', '-' and '_'.
NICK_RE = re.compile(r"[\w.\-]{1,32}")


@dataclass
class ChatOptions:
    nick: str = "peer"
    encrypt: bool = False
    provider: Provider | None = None
    passphrase: bytes | None = None
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0

    def check(self) -> None:
        check_nick(self.nick)
        if self.encrypt and (self.provider is None or not self.passphrase):
            raise UsageError("--encrypt needs a provider and a passphrase")

    @property
    def mode(self) -> str:
        return "encrypted" if self.encrypt else "plain"


def check_nick(nick: str) -> None:
    if not NICK_RE.fullmatch(nick):
        raise UsageError(f"bad nickname {nick!r}: 1-32 letters, digits, '.', '-' or '_'")


async def close_writer(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2)
