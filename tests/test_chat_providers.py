"""Peers on different providers talk to each other (virtio in a guest, software on the host)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from cdev.chat import twopeer
from cdev.errors import CdevError
from cdev.plugins import get_registry
from cdev.provider import Capabilities, Provider, Session
from tests.chat_helpers import free_port, options, run, tcp


class SplitSessions(Provider):
    """The software provider, claiming it cannot hold a cipher and a MAC in one session,
    as a device-backed provider may: chat must then open two sessions and still agree."""

    name = "split"
    description = "software, one algorithm per session"

    def __init__(self) -> None:
        self._inner = get_registry().open_provider("software")

    def capabilities(self) -> Capabilities:
        return dataclasses.replace(self._inner.capabilities(), combined=False)

    def open_session(
        self,
        cipher: str | None = None,
        key: bytes | None = None,
        mac: str | None = None,
        mac_key: bytes | None = None,
    ) -> Session:
        assert cipher is None or mac is None, "asked for a combined session"
        return self._inner.open_session(cipher, key, mac, mac_key)


def _providers() -> list[str]:
    names = []
    for name in sorted(get_registry().providers):
        try:
            get_registry().open_provider(name).close()
            names.append(name)
        except CdevError:
            continue
    return names


async def _talk(left: Provider, right: Provider) -> list[bytes | None]:
    address = f"127.0.0.1:{free_port()}"
    got: asyncio.Future[twopeer.Link] = asyncio.get_running_loop().create_future()

    lopts = options("l", "pw")
    lopts.provider = left

    async def on_conn2(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.set_result(await twopeer.handshake(r, w, twopeer.LISTEN, lopts))

    server = await tcp().serve(address, on_conn2)
    async with server:
        copts = options("c", "pw")
        copts.provider = right
        reader, writer = await tcp().connect(address, 5)
        conn = await twopeer.handshake(reader, writer, twopeer.CONNECT, copts)
        lst = await got
        assert conn.fingerprint == lst.fingerprint
        await conn.send(b"to the listener")
        await lst.send(b"to the connector")
        await conn.goodbye()
        out = [await lst.receive(), await conn.receive(), await lst.receive()]
        await conn.close()
        await lst.close()
        return out


@pytest.mark.parametrize("name", _providers())
def test_each_available_provider_talks_to_software(name: str) -> None:
    reg = get_registry()
    out = run(lambda: _talk(reg.open_provider(name), reg.open_provider("software")))
    assert out == [b"to the listener", b"to the connector", None]


def test_split_sessions_interoperate_with_combined_ones() -> None:
    software = get_registry().open_provider("software")
    out = run(lambda: _talk(SplitSessions(), software))
    assert out == [b"to the listener", b"to the connector", None]
