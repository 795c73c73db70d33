"""Run the real ``cdev`` console script as a subprocess, the way users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CDEV = str(Path(sys.executable).with_name("cdev"))


def run_cdev(
    *args: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CDEV_")}
    full_env.update(env or {})
    return subprocess.run(
        [CDEV, *args],
        env=full_env,
        input=input,
        capture_output=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The error contract: the given exit code and one ``cdev: ...`` line, no traceback."""
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cdev: "), err
    assert "Traceback" not in err
    return lines[0]
