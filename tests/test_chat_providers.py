"""Peers on different providers talk to each other (virtio in a guest, software on the host)."""

from __future__ import annotations

import asyncio

import pytest

from cdev.chat import twopeer
from cdev.errors import CdevError
from cdev.plugins import get_registry
from cdev.provider import Provider
from tests.chat_helpers import free_port, options, run, tcp


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
