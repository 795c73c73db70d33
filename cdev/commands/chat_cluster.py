"""``cdev chat cluster up/down``: a local 3-node NATS cluster to try bus rooms on.

Example: cdev chat cluster up; cdev chat join nats://127.0.0.1:4222,127.0.0.1:4223/lobby -n ana
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cdev.errors import CdevError

cluster_app = typer.Typer(
    name="cluster",
    no_args_is_help=True,
    help=(
        "Start or stop a local NATS cluster (3 nats-server processes with routes on 127.0.0.1) "
        "for rooms over a bus: cdev chat join nats://HOST:PORT,.../ROOM.\n\n"
        "Example: cdev chat cluster up --port 4222"
    ),
)

STATE = typer.Option(
    None,
    "--state",
    help="Where the running cluster is recorded (default: /tmp/cdev-nats-cluster-UID.json).",
)


def _state(path: Path | None) -> Path:
    return path or Path(f"/tmp/cdev-nats-cluster-{os.getuid()}.json")


@cluster_app.command("up")
def up_cmd(
    port: int = typer.Option(
        4222, "--port", min=1, max=65533, help="Client port of the first server (+1, +2 next)."
    ),
    size: int = typer.Option(3, "--size", min=1, max=9, help="Number of servers."),
    state: Path = STATE,
) -> None:
    """Start the servers in the background and print the address to join.

    Example: cdev chat cluster up && cdev chat join nats://127.0.0.1:4222/lobby --nick ana
    """
    from cdev.chat.cluster import LocalCluster

    path = _state(state)
    if path.exists():
        old = LocalCluster.load(path)
        if any(old.alive(n) for n in old.nodes):
            raise CdevError(f"a cluster is already running ({path}): cdev chat cluster down")
    if port + size - 1 > 65535:
        raise CdevError("ports past 65535", exit_code=2)
    cluster = LocalCluster(size=size, die_with_parent=False)
    cluster.start(ports=[port + i for i in range(size)])
    cluster.save(path)
    typer.echo(f"{cluster.address}/ROOM")


@cluster_app.command("down")
def down_cmd(state: Path = STATE) -> None:
    """Stop the servers started by 'up'.

    Example: cdev chat cluster down
    """
    from cdev.chat.cluster import LocalCluster

    path = _state(state)
    if not path.exists():
        raise CdevError(f"no cluster recorded in {path}")
    LocalCluster.load(path).stop()
    path.unlink()
    typer.echo("stopped")
