"""Two-peer chat through the real CLI over real sockets, and hostile peers at the record layer."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from cdev.chat import twopeer
from cdev.chat.framing import DATA, GOODBYE, HEADER, encode
from cdev.errors import CdevError
from tests.chat_helpers import (
    HANG_GUARD,
    env,
    free_port,
    one_error_line,
    options,
    spawn,
    tcp,
    wait_for_line,
    wait_listening,
)


def _communicate(procs: list[subprocess.Popen[bytes]], inputs: list[bytes]) -> list[tuple]:
    """Feed both peers at the same time (nobody waits for the other to answer)."""
    results: list[tuple] = [None, None]  # type: ignore[list-item]

    def run(i: int) -> None:
        out, err = procs[i].communicate(inputs[i], timeout=HANG_GUARD)
        results[i] = (procs[i].returncode, out, err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _lines(prefix: str, n: int) -> bytes:
    return b"".join(f"{prefix} line {i} \u00e9\n".encode() for i in range(n))


@pytest.mark.parametrize("mode", ["plain-tcp", "encrypted-unix"])
def test_conversation_both_ways_at_once(mode: str, tmp_path: Path) -> None:
    encrypted = mode.startswith("encrypted")
    if mode.endswith("unix"):
        address, extra = str(tmp_path / "chat.sock"), ["--transport", "unix"]
    else:
        address, extra = f"127.0.0.1:{free_port()}", []
    flags = [*extra, *(["--encrypt"] if encrypted else [])]
    pw = "correct horse" if encrypted else None
    listener = spawn("listen", address, *flags, passphrase=pw)
    wait_listening(address, "unix" if extra else "tcp")
    connector = spawn("connect", address, *flags, passphrase=pw)
    (lrc, lout, lerr), (crc, cout, cerr) = _communicate(
        [listener, connector], [_lines("L", 300), _lines("C", 300)]
    )
    assert (lrc, crc) == (0, 0), (lerr, cerr)
    assert lout == _lines("C", 300)
    assert cout == _lines("L", 300)
    if encrypted:
        fps = [
            next(ln for ln in e.decode().splitlines() if "fingerprint" in ln) for e in (lerr, cerr)
        ]
        assert fps[0] == fps[1]


def test_wrong_passphrase_drops_that_peer_and_the_listener_keeps_waiting() -> None:
    address = f"127.0.0.1:{free_port()}"
    listener = spawn("listen", address, "-e", passphrase="right")
    try:
        wait_listening(address)
        wrong = spawn("connect", address, "-e", passphrase="wrong")
        out, err = wrong.communicate(b"secret\n", timeout=HANG_GUARD)
        assert wrong.returncode == 1 and out == b""  # nothing shown before confirmation
        assert "wrong passphrase" in one_error_line(err)
        wait_for_line(listener, "stderr", b"wrong passphrase")
        right = spawn("connect", address, "-e", passphrase="right")
        (lrc, lout, _), (crc, cout, _) = _communicate([listener, right], [b"hi C\n", b"hi L\n"])
        assert (lrc, crc, lout, cout) == (0, 0, b"hi L\n", b"hi C\n")
    finally:
        listener.kill()
        listener.wait()


def test_mode_mismatch_is_explained_and_the_listener_keeps_waiting() -> None:
    address = f"127.0.0.1:{free_port()}"
    listener = spawn("listen", address, "-e", passphrase="pw")
    try:
        wait_listening(address)
        connector = spawn("connect", address)
        _, cerr = connector.communicate(b"", timeout=HANG_GUARD)
        assert connector.returncode == 1 and "add --encrypt" in one_error_line(cerr)
        wait_for_line(listener, "stderr", b"both sides need --encrypt")
        assert listener.poll() is None
    finally:
        listener.kill()
        listener.wait()


def test_handshakes_are_rate_limited_per_source() -> None:
    address = f"127.0.0.1:{free_port()}"
    listener = spawn("listen", address, "-e", passphrase="right")
    try:
        wait_listening(address)

        async def guesses() -> list[str]:
            errors = []
            for _ in range(8):  # a guesser: one guess per connection, and few connections
                reader, writer = await tcp().connect(address, 5)
                try:
                    await twopeer.handshake(reader, writer, twopeer.CONNECT, options("g", "guess"))
                except CdevError as exc:
                    errors.append(str(exc))
                finally:
                    writer.close()
            return errors

        errors = asyncio.run(asyncio.wait_for(guesses(), HANG_GUARD))
        assert len(errors) == 8
        # the burst of 5 (the readiness probe took one), then refusals before any PAKE
        assert sum("wrong passphrase" in e for e in errors) <= 5
        assert "too many handshakes from your address" in errors[-1]
        wait_for_line(listener, "stderr", b"too many handshakes from ip 127.0.0.1")
        assert listener.poll() is None  # still listening
    finally:
        listener.kill()
        listener.wait()


def test_silent_peer_is_dropped_and_listener_keeps_waiting() -> None:
    address = f"127.0.0.1:{free_port()}"
    listener = spawn("listen", address, "--handshake-timeout", "0.5")
    wait_listening(address)
    silent = socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])))
    try:
        wait_for_line(listener, "stderr", b"no handshake within 0.5 s")
        listener.stdin.close()  # type: ignore[union-attr]
        connector = spawn("connect", address)
        connector.communicate(b"after the silent one\n", timeout=HANG_GUARD)
        assert connector.returncode == 0
        assert listener.stdout.read() == b"after the silent one\n"  # type: ignore[union-attr]
        assert listener.wait(HANG_GUARD) == 0
    finally:
        silent.close()
        listener.kill()


def test_connecting_to_a_silent_server_times_out() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        proc = spawn("connect", f"127.0.0.1:{port}", "--handshake-timeout", "0.5")
        _, err = proc.communicate(b"", timeout=HANG_GUARD)
    assert proc.returncode == 1
    assert "no handshake from" in one_error_line(err)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["connect", "no-such-host.invalid:7000"], 1, "unknown host"),
        (["connect", "127.0.0.1:1"], 1, "Connection refused"),
        (["connect", "localhost"], 2, "malformed address"),
        (["listen", "127.0.0.1:99999"], 2, "malformed address"),
        (["connect", "x", "--transport", "carrier-pigeon"], 2, "unknown transport"),
        (["connect", "127.0.0.1:1", "-e", "--provider", "nope"], 2, "unknown provider"),
        (["join", "127.0.0.1:1", "--nick", "bad nick!"], 2, "bad nickname"),
    ],
)
def test_bad_input_is_one_line(args: list[str], code: int, message: str) -> None:
    proc = subprocess.run(
        [str(Path(spawn.__globals__["CDEV"])), "chat", *args],
        env=env("pw"),
        input=b"",
        capture_output=True,
        timeout=HANG_GUARD,
    )
    assert proc.returncode == code, proc.stderr
    assert message in one_error_line(proc.stderr)


def test_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = spawn("listen", f"127.0.0.1:{port}")
        _, err = proc.communicate(b"", timeout=HANG_GUARD)
    assert proc.returncode == 1
    assert "address already in use" in one_error_line(err)


def test_peer_that_dies_is_reported_as_truncation() -> None:
    address = f"127.0.0.1:{free_port()}"
    listener = spawn("listen", address)
    wait_listening(address)
    connector = spawn("connect", address)
    connector.stdin.write(b"last words\n")  # type: ignore[union-attr]
    connector.stdin.flush()  # type: ignore[union-attr]
    wait_for_line(listener, "stdout", b"last words")
    connector.send_signal(signal.SIGKILL)
    connector.wait(HANG_GUARD)
    _, err = listener.communicate(timeout=HANG_GUARD)
    assert listener.returncode == 1
    assert "left without goodbye" in one_error_line(err)


# -- hostile peers, crafted at the record layer -------------------------------------------


def _attack(kind: str, encrypted: bool) -> tuple[int, bytes, bytes]:
    """Run a real listener and talk to it as a peer that breaks the rules in one way."""
    address = f"127.0.0.1:{free_port()}"
    listener = spawn("listen", address, *(["-e"] if encrypted else []), passphrase="pw")
    wait_listening(address)

    async def peer() -> None:
        reader, writer = await tcp().connect(address, 5)
        link = await twopeer.handshake(
            reader, writer, twopeer.CONNECT, options("mallory", "pw" if encrypted else None)
        )
        s = link.sealer
        if kind == "oversize":
            writer.write(HEADER.pack(DATA, 0, 60000) + bytes(100))
        elif kind == "truncate":
            writer.write(encode(DATA, s.seal(DATA, b"ok") if s else b"ok"))
        else:
            assert s is not None
            first = s.seal(DATA, b"ok")
            writer.write(encode(DATA, first))
            if kind == "tamper":
                bad = bytearray(s.seal(DATA, b"evil"))
                bad[-1] ^= 0x80
                writer.write(encode(DATA, bytes(bad)))
            elif kind == "replay":
                writer.write(encode(DATA, first))
            elif kind == "reorder":
                s.seal(DATA, b"skipped")
                writer.write(encode(DATA, s.seal(DATA, b"later")))
            elif kind == "forged-goodbye":
                writer.write(encode(GOODBYE, b""))
        await writer.drain()
        # A FIN without GOODBYE (an RST could discard what the listener has not read yet).
        writer.close()
        await writer.wait_closed()

    asyncio.run(asyncio.wait_for(peer(), HANG_GUARD))
    out, err = listener.communicate(b"", timeout=HANG_GUARD)
    return listener.returncode, out, err


@pytest.mark.parametrize(
    ("kind", "encrypted", "message"),
    [
        ("tamper", True, "failed authentication (tampered)"),
        ("replay", True, "replayed record from peer (sequence 0, expected 1)"),
        ("reorder", True, "reordered or dropped record from peer (sequence 2, expected 1)"),
        ("forged-goodbye", True, "malformed encrypted record"),
        ("truncate", True, "left without goodbye"),
        ("truncate", False, "left without goodbye"),
        ("oversize", False, "oversize record: 60000 bytes"),
    ],
)
def test_hostile_records_close_the_connection(kind: str, encrypted: bool, message: str) -> None:
    rc, out, err = _attack(kind, encrypted)
    assert rc == 1
    assert out == (b"" if kind == "oversize" else b"ok\n")  # only what passed the checks
    assert message in one_error_line(err)
