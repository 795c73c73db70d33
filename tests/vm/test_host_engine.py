"""The ``host`` engine (/dev/crypto pass-through), on a machine that has a /dev/crypto.

This host has none, but the guest does: our own device speaks cryptodev-linux's ABI, so
``ln -s /dev/cryptodev0 /dev/crypto`` there (what a user of a /dev/crypto program does)
gives the host engine a real cryptodev-linux device to pass through to. Inside the
guest, the QEMU we built runs under qtest with ``engine=host`` and the algorithm table's
tests (tests/test_device_protocol_qtest.py) are run against it unchanged: every
request goes guest qtest driver -> inner QEMU's host engine -> the guest's
/dev/cryptodev0 -> the outer QEMU's builtin engine, and must give the same answers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from cdev.vm import qemu_build

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]

# What cannot hold through one more layer, and why:
DESELECT = {
    # The outer device's per-device session budget (1,024 by default) is below 4,096,
    # and every inner session is an outer one on the host engine's single fd.
    "test_4096_sessions_on_one_handle": "outer session budget",
    # Budgets and feature switches of the inner device are the request path's, tested on
    # the host; the engine only decides which algorithms exist.
    "test_budgets_refuse_and_free": "outer session budget",
}


# Every test of the file takes ~6 minutes in a TCG guest: CI runs those of each kind of
# request (published vectors, every digest, GCM, chained IVs, multi-part, HASH_COPY,
# ring order); CDEV_HOST_ENGINE_ALL=1 runs the whole file.
CI_SUBSET = (
    "sp800 or ieee1619 or fips180 or every_digest or gcm or no_iv or iv_written "
    "or multipart or hash_copy or ring_order"
)


def test_protocol_suite_through_the_host_engine(guest: Any) -> None:
    qemu = qemu_build.ensure_qemu()
    deselect = " and ".join(f"not {name}" for name in DESELECT)
    if not os.environ.get("CDEV_HOST_ENGINE_ALL"):
        deselect = f"({CI_SUBSET}) and {deselect}"
    script = (
        "set -e; ln -sf /dev/cryptodev0 /dev/crypto; "
        f"cd {ROOT}; CDEV_QTEST_ENGINE=host CDEV_QTEST_QEMU={qemu} "
        f"{sys.executable} -m pytest -q -p no:cacheprovider -o addopts= -x "
        f"tests/test_device_protocol_qtest.py -k '{deselect}' 2>&1"
    )
    res = guest.run(["sh", "-c", script], timeout=1800)
    tail = "\n".join(res.stdout.splitlines()[-30:])
    assert res.status == 0, tail
    assert " passed" in tail and "failed" not in tail, tail
    guest.run(["rm", "-f", "/dev/crypto"], timeout=60)
