"""``cdev vm demo``, the README's end-to-end tour, as a user runs it."""

from __future__ import annotations

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
    assert "13/13 NIST/RFC vectors" in out
    assert "FAILED" not in out
