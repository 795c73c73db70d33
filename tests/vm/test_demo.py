"""``cdev vm demo``, the README's end-to-end tour, as a user runs it."""

from __future__ import annotations

import re

import pytest

from tests.cli_helpers import run_cdev

pytestmark = pytest.mark.vm


def test_vm_demo_passes_every_step() -> None:
    proc = run_cdev("vm", "demo", "--size", "1", env={"COLUMNS": "200"}, timeout=1800)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    for step in ("build + boot", "self-test in the guest", "file round trip",
                 "encrypted chat guest <-> host", "virtqueue trace"):  # fmt: skip
        row = next(ln for ln in out.splitlines() if step in ln)
        assert " ok " in row, row
    # The device offers every algorithm of the table: all vectors pass, none unsupported.
    m = re.search(r"(\d+)/(\d+) NIST/RFC vectors through the device, 0 unsupported, 0 failed", out)
    assert m and m[1] == m[2] and int(m[1]) >= 200, out
    assert "FAILED" not in out
