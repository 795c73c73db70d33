"""The tcp and unix transports: real sockets, real errors, one line each."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from cdev_plugins.tcp import parse_address

from cdev.errors import CdevError, UsageError
from cdev.plugins import get_registry
from tests.chat_helpers import free_port


def test_both_transports_are_registered_as_plugins() -> None:
    names = get_registry().transports
    assert {"tcp", "unix"} <= set(names)
    assert names["tcp"].plugin == "tcp" and names["unix"].plugin == "unix"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("localhost:0", ("localhost", 0)),
        (":7000", ("", 7000)),
        ("[::1]:7000", ("::1", 7000)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["7000", "host:", "host:port", "host:70000", "::1:70", "[::1]"])
def test_malformed_addresses(address: str) -> None:
    with pytest.raises(UsageError, match="malformed address"):
        parse_address(address)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readexactly(5))
    await writer.drain()
    writer.close()


async def _roundtrip(name: str, address: str) -> bytes:
    tr = get_registry().transport(name)
    server = await tr.serve(address, _echo)
    async with server:
        reader, writer = await tr.connect(address, 5)
        writer.write(b"hello")
        data = await reader.readexactly(5)
        writer.close()
        return data


def test_tcp_ipv4_roundtrip() -> None:
    assert asyncio.run(_roundtrip("tcp", f"127.0.0.1:{free_port()}")) == b"hello"


def test_tcp_ipv6_roundtrip() -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert asyncio.run(_roundtrip("tcp", f"[::1]:{free_port()}")) == b"hello"


def test_unix_roundtrip_and_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "chat.sock")
    assert asyncio.run(_roundtrip("unix", path)) == b"hello"
    # The socket file is left behind; a new server must replace the stale one.
    assert os.path.exists(path)
    assert asyncio.run(_roundtrip("unix", path)) == b"hello"


def test_tcp_port_in_use() -> None:
    async def main() -> None:
        tr = get_registry().transport("tcp")
        address = f"127.0.0.1:{free_port()}"
        server = await tr.serve(address, _echo)
        async with server:
            with pytest.raises(CdevError, match="address already in use"):
                await tr.serve(address, _echo)

    asyncio.run(main())


def test_unix_live_socket_in_use(tmp_path: Path) -> None:
    async def main() -> None:
        tr = get_registry().transport("unix")
        path = str(tmp_path / "s")
        server = await tr.serve(path, _echo)
        async with server:
            with pytest.raises(CdevError, match="already in use"):
                await tr.serve(path, _echo)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("name", "address", "message"),
    [
        ("tcp", "no-such-host.invalid:7000", "unknown host"),
        ("tcp", "127.0.0.1:1", "refused"),
        ("tcp", "127.0.0.1:0", "port > 0"),
        ("unix", "/nonexistent/dir/sock", "No such file"),
        ("unix", "/tmp/" + "x" * 200, "longer than"),
    ],
)
def test_connect_errors_are_one_line(name: str, address: str, message: str) -> None:
    tr = get_registry().transport(name)
    with pytest.raises(CdevError, match=message) as info:
        asyncio.run(tr.connect(address, 5))
    assert "\n" not in str(info.value)
