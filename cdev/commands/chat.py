"""``cdev chat``: listen / connect (two peers), broker / join (many peers)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import typer

from cdev.chat.options import ChatOptions, check_nick
from cdev.commands.options import ProviderOption
from cdev.errors import CdevError
from cdev.keys import read_passphrase
from cdev.plugins import get_registry
from cdev.transport import Transport

EXIT_CODES = (
    "Exit codes: 0 the chat ended with goodbyes (or stdin ended); 1 peer, protocol or "
    "integrity failure, wrong passphrase, address in use, unknown host, connection lost; "
    "2 usage error or unknown/unavailable provider or transport; 130 interrupted."
)

chat_app = typer.Typer(
    name="chat",
    no_args_is_help=True,
    help=(
        "Chat between two peers (listen/connect) or many (broker/join), plain or end-to-end "
        "encrypted through a crypto provider. Without a terminal, reads lines from stdin and "
        "writes received messages to stdout, like nc.\n\n" + EXIT_CODES + "\n\n"
        "Example: CDEV_PASSPHRASE=s3cret cdev chat connect 10.0.2.2:7000 --encrypt "
        "--provider virtio"
    ),
)

TRANSPORT = typer.Option(
    "tcp",
    "--transport",
    "-t",
    help="Transport plugin: tcp (HOST:PORT), unix (PATH); join also nats (nats://H:P,.../ROOM).",
)
ENCRYPT = typer.Option(False, "--encrypt", "-e", help="End-to-end encrypt (shared passphrase).")
PROVIDER = ProviderOption  # --provider, or CDEV_PROVIDER, as for every other command
PASSFILE = typer.Option(
    None,
    "--passphrase-file",
    help="Read the passphrase from FILE (else CDEV_PASSPHRASE, else a prompt).",
)
HANDSHAKE_TIMEOUT = typer.Option(
    10.0, "--handshake-timeout", min=0.1, help="Seconds a peer has to complete the handshake."
)


def _run(coro: Coroutine[Any, Any, int], opts: ChatOptions | None = None) -> None:
    """Run a chat; close the provider it opened; peer-quoting errors made terminal-safe."""
    from cdev.chat.safe import safe_text

    try:
        code = asyncio.run(coro)
    except CdevError as exc:
        # Messages may quote what a peer or broker sent: no escape sequence reaches stderr.
        raise CdevError(safe_text(str(exc), 500), exit_code=exc.exit_code) from None
    finally:
        if opts is not None and opts.provider is not None:
            opts.provider.close()
    raise typer.Exit(code)


def _transport(name: str) -> Transport:
    return get_registry().transport(name)


def _room_transport(name: str, address: str, encrypt: bool) -> tuple[Transport, bool]:
    """The transport for a room address (``SCHEME://...`` picks the transport SCHEME), and
    whether it is a message bus rather than a broker connection."""
    scheme, sep, _ = address.partition("://")
    if sep and name == "tcp":
        name = scheme
    tr = _transport(name)
    set_mode = getattr(tr, "set_member_mode", None)
    if callable(set_mode):
        # On a bus nobody runs 'broker --encrypt': a new room takes its first member's mode.
        set_mode("encrypted" if encrypt else "plain")
        return tr, True
    return tr, False


def _options(
    nick: str,
    encrypt: bool,
    provider: str,
    passphrase_file: Path | None,
    handshake_timeout: float,
) -> ChatOptions:
    check_nick(nick)
    opts = ChatOptions(nick=nick, encrypt=encrypt, handshake_timeout=handshake_timeout)
    if encrypt:
        opts.passphrase = read_passphrase(passphrase_file)
        opts.provider = get_registry().open_provider(provider)
    return opts


@chat_app.command("listen")
def listen_cmd(
    address: str = typer.Argument(..., help="HOST:PORT to listen on (':PORT' for all), or PATH."),
    transport: str = TRANSPORT,
    encrypt: bool = ENCRYPT,
    provider: str = PROVIDER,
    passphrase_file: Path = PASSFILE,
    nick: str = typer.Option("listener", "--nick", "-n", help="Your name shown to the peer."),
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> None:
    """Wait for one peer and chat with it.

    Example: cdev chat listen 127.0.0.1:7000 --encrypt
    """
    from cdev.chat import twopeer
    from cdev.chat.ui import pick_ui

    tr = _transport(transport)
    opts = _options(nick, encrypt, provider, passphrase_file, handshake_timeout)
    _run(twopeer.listen(tr, address, opts, pick_ui()), opts)


@chat_app.command("connect")
def connect_cmd(
    address: str = typer.Argument(..., help="HOST:PORT or PATH of a 'cdev chat listen'."),
    transport: str = TRANSPORT,
    encrypt: bool = ENCRYPT,
    provider: str = PROVIDER,
    passphrase_file: Path = PASSFILE,
    nick: str = typer.Option("connector", "--nick", "-n", help="Your name shown to the peer."),
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> None:
    """Connect to a listening peer and chat with it.

    Example: echo hello | cdev chat connect 127.0.0.1:7000
    """
    from cdev.chat import twopeer
    from cdev.chat.ui import pick_ui

    tr = _transport(transport)
    opts = _options(nick, encrypt, provider, passphrase_file, handshake_timeout)
    _run(twopeer.connect(tr, address, opts, pick_ui()), opts)


@chat_app.command("broker")
def broker_cmd(
    address: str = typer.Argument(..., help="HOST:PORT to listen on (':PORT' for all), or PATH."),
    transport: str = TRANSPORT,
    encrypt: bool = typer.Option(
        False, "--encrypt", "-e", help="Accept only encrypted peers (the broker needs no key)."
    ),
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_queue: int = typer.Option(
        2 << 20, "--max-queue", min=65536, help="Bytes queued to one peer before it is dropped."
    ),
    slow_grace: float = typer.Option(
        3.0, "--slow-grace", min=0.0, help="Seconds a peer may stay over --max-queue."
    ),
    rate: float = typer.Option(
        1000.0, "--rate", min=1.0, help="Messages per second one peer may sustain (burst: 1 s)."
    ),
    max_peers: int = typer.Option(10000, "--max-peers", min=1, help="Most peers at once."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not log joins and leaves."),
) -> None:
    """Relay messages between many peers; with --encrypt it relays ciphertext it cannot read.

    Example: cdev chat broker :7000 --encrypt
    """
    from cdev.chat.broker import BrokerConfig, run_broker

    tr = _transport(transport)
    config = BrokerConfig(
        encrypted=encrypt,
        handshake_timeout=handshake_timeout,
        max_queue=max_queue,
        slow_grace=slow_grace,
        rate=rate,
        burst=rate,
        max_peers=max_peers,
        quiet=quiet,
    )
    _run(run_broker(tr, address, config))


@chat_app.command("join")
def join_cmd(
    address: str = typer.Argument(
        ..., help="HOST:PORT or PATH of a 'cdev chat broker', or nats://HOST:PORT,.../ROOM."
    ),
    nick: str = typer.Option(..., "--nick", "-n", help="Your name in the room."),
    transport: str = TRANSPORT,
    encrypt: bool = ENCRYPT,
    provider: str = PROVIDER,
    passphrase_file: Path = PASSFILE,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> None:
    """Join a broker's room (or a room on a NATS cluster: nats://HOST:PORT,.../ROOM) as NICK;
    stdin EOF (or Ctrl-D) says goodbye and leaves.

    Example: cdev chat join 127.0.0.1:7000 --nick alice --encrypt
    """
    from cdev.chat.client import join
    from cdev.chat.ui import pick_ui

    tr, on_bus = _room_transport(transport, address, encrypt)
    opts = _options(nick, encrypt, provider, passphrase_file, handshake_timeout)
    if on_bus:
        from cdev.chat.buspeer import bus_join

        _run(bus_join(tr, address, opts, pick_ui()), opts)
    _run(join(tr, address, opts, pick_ui()), opts)


def register(app: typer.Typer) -> None:
    from cdev.commands.chat_cluster import cluster_app

    chat_app.add_typer(cluster_app, name="cluster")
    app.add_typer(chat_app, name="chat")
