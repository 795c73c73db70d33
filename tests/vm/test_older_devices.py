"""The guest driver on devices that offer less: no indirect descriptors, no VCD_F_ORDERED.

One guest with two of our devices: cryptodev0 as usual, cryptodev1 with
``indirect_desc=off,ordered=off``. Without indirect descriptors a request takes a ring
entry per run of physically contiguous pages, and a 256 KiB one may need more entries
than the ring has: then it must fail at once with ENOMEM, not wait for room that never
comes (whether it does depends on how the pages fall, so both answers are accepted; a
hang is not). A device that does not promise to
run a session's requests in order must not be given CIOCASYNCCRYPT requests
(EOPNOTSUPP), while cryptodev0 in the same guest takes them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdev.vm.guest import Guest
from tests.vm.own_guest import own_guest
from tests.vm.test_frontend import assert_console_clean

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guest2() -> Iterator[Guest]:
    older = "virtio-cryptodev-pci,indirect_desc=off,ordered=off"
    with own_guest(extra_args=["-device", older]) as g:
        yield g


def _limits(g: Any, node: str) -> list[str]:
    binary = Path(g.shared_dir) / "async"
    if not binary.exists():
        subprocess.run(
            ["cc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
             str(ROOT / "kernel" / "tests" / "async.c")],
            check=True,
        )  # fmt: skip
    res = g.run(["env", f"CDEV_NODE={node}", str(binary), "limits"], timeout=120)
    assert res.status == 0, res
    return str(res.stdout).splitlines()


def test_without_indirect_or_order(guest2: Any) -> None:
    got = _limits(guest2, "/dev/cryptodev1")
    assert got[0] == "crypt 65536 ok" and got[2] == "async Operation not supported", got
    assert got[1] in ("crypt 262144 ok", "crypt 262144 Cannot allocate memory"), got
    assert _limits(guest2, "/dev/cryptodev0") == [
        "crypt 65536 ok",
        "crypt 262144 ok",
        "async ok",
    ]
    assert_console_clean(guest2)
