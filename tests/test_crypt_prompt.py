"""The passphrase prompt, on a real terminal: asked only once the input is known to be
readable (and, to decrypt, known to need a passphrase)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import termios
import time
from pathlib import Path

from tests.cli_helpers import CDEV

FAST = ["--work-factor", "10"]


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # make the pty this new session's terminal


def on_terminal(args: list[str], answers: list[bytes], timeout: float = 60) -> tuple[int, bytes]:
    """Run cdev with a pty as its controlling terminal; type each answer after a prompt.

    Returns the exit code and everything shown on the terminal.
    """
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDEV_")}
    proc = subprocess.Popen(
        [CDEV, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    seen, pending = b"", list(answers)
    answered_at = -1  # where seen ended when we last typed: answer each prompt once
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            # A prompt is the last thing shown, with no newline after it yet.
            if pending and seen.endswith(b": ") and len(seen) > answered_at:
                os.write(master, pending.pop(0) + b"\n")
                answered_at = len(seen)
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=10)
    os.close(master)
    return code, seen


def test_prompt_works_on_a_terminal(tmp_path: Path) -> None:
    # The positive case, so that the tests below can tell "no prompt" from "no terminal".
    src = tmp_path / "a"
    src.write_bytes(b"secret data")
    code, seen = on_terminal(["crypt", "encrypt", str(src), *FAST], [b"pw", b"pw"])
    assert code == 0, seen
    assert b"Passphrase:" in seen and b"Passphrase (again):" in seen
    code, seen = on_terminal(
        ["crypt", "decrypt", f"{src}.cdev", "-o", str(tmp_path / "b")], [b"pw"]
    )
    assert code == 0, seen
    assert (tmp_path / "b").read_bytes() == b"secret data"


def test_no_prompt_for_a_missing_or_unreadable_input(tmp_path: Path) -> None:
    code, seen = on_terminal(["crypt", "encrypt", str(tmp_path / "missing"), *FAST], [b"pw"])
    assert code == 1 and b"cannot read" in seen and b"Passphrase" not in seen, seen
    code, seen = on_terminal(["crypt", "encrypt", str(tmp_path), "-o", str(tmp_path / "x")], [])
    assert code == 1 and b"directory" in seen and b"Passphrase" not in seen, seen
    code, seen = on_terminal(["crypt", "decrypt", str(tmp_path / "gone.cdev")], [b"pw"])
    assert code == 1 and b"cannot read" in seen and b"Passphrase" not in seen, seen


def test_no_prompt_when_the_input_is_not_a_passphrase_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.cdev"
    junk.write_bytes(b"not encrypted at all")
    code, seen = on_terminal(["crypt", "decrypt", str(junk)], [b"pw"])
    assert code == 1 and b"not a cdev encrypted file" in seen and b"Passphrase" not in seen
    # Encrypted with a key file: say so instead of asking for a passphrase.
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    src = tmp_path / "k"
    src.write_bytes(b"x")
    code, seen = on_terminal(["crypt", "encrypt", str(src), "--key-file", str(key)], [])
    assert code == 0, seen
    code, seen = on_terminal(["crypt", "decrypt", f"{src}.cdev", "-o", str(tmp_path / "o")], [])
    assert code == 1 and b"--key-file" in seen and b"Passphrase" not in seen, seen


def test_no_prompt_when_the_output_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"data")
    (tmp_path / "a.cdev").write_bytes(b"keep")
    code, seen = on_terminal(["crypt", "encrypt", str(src), *FAST], [b"pw"])
    assert code == 2 and b"already exists" in seen and b"Passphrase" not in seen, seen
