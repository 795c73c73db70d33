"""Running guests by name: records, stale ones, names, a private directory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cdev.errors import CdevError, UsageError
from cdev.vm import registry
from cdev.vm.guest import agent_source


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setenv(registry.RUN_DIR_ENV, str(d))
    return d


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _reg(name: str | None, pid: int, tmp: Path) -> registry.VmRecord:
    return registry.register(
        name, pid=pid, qmp=tmp / "qmp.sock", trace_log=tmp / "trace.log", workdir=tmp
    )


def test_names_are_first_free_and_records_round_trip(tmp_path: Path) -> None:
    a = _reg(None, os.getpid(), tmp_path)
    b = _reg(None, os.getpid(), tmp_path)
    assert (a.name, b.name) == ("vm", "vm2")
    assert registry.lookup("vm2") == b
    assert [r.name for r in registry.running()] == ["vm", "vm2"]
    registry.unregister(a)
    assert _reg(None, os.getpid(), tmp_path).name == "vm"


def test_a_live_name_is_refused_a_stale_one_is_reused(tmp_path: Path) -> None:
    _reg("box", os.getpid(), tmp_path)
    with pytest.raises(UsageError, match="already running"):
        _reg("box", os.getpid(), tmp_path)
    stale = _reg("old", _dead_pid(), tmp_path)
    assert [r.name for r in registry.running()] == ["box"]  # stale record dropped
    with pytest.raises(UsageError, match="no running VM named 'old'"):
        registry.lookup("old")
    assert _reg("old", os.getpid(), tmp_path).pid != stale.pid


@pytest.mark.parametrize("name", ["", "-x", "a/b", "..", "x" * 65, "a b", "é"])
def test_bad_names(name: str) -> None:
    with pytest.raises(UsageError):
        registry.check_name(name)


def test_garbage_records_are_ignored(run_dir: Path, tmp_path: Path) -> None:
    _reg("ok", os.getpid(), tmp_path)
    vms = run_dir / "vms"
    (vms / "junk.json").write_bytes(b"\x00not json")
    (vms / "big.json").write_text('{"name": "' + "x" * 100_000 + '"}')
    (vms / "neg.json").write_text(
        '{"name": "neg", "pid": -1, "qmp": "/x", "workdir": "/", "started": 0}'
    )
    assert [r.name for r in registry.running()] == ["ok"]


def test_run_dir_must_be_private(run_dir: Path) -> None:
    run_dir.mkdir(mode=0o777)
    os.chmod(run_dir, 0o777)
    with pytest.raises(CdevError, match="not a private directory"):
        registry.run_dir()


def test_agent_ships_with_the_package() -> None:
    src = agent_source()
    compile(src, "agent.py", "exec")
    assert "def main(" in src and "import cdev" not in src


def test_vm_list_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdev.cli import build_app

    _reg("box", os.getpid(), tmp_path)
    _reg("gone", _dead_pid(), tmp_path)
    result = CliRunner().invoke(build_app(), ["vm", "list", "--json"])
    assert result.exit_code == 0, result.output
    vms = json.loads(result.stdout)
    assert [v["name"] for v in vms] == ["box"] and vms[0]["qmp"] == str(tmp_path / "qmp.sock")
    bad = CliRunner().invoke(build_app(), ["vm", "run", "--name", "../x", "--", "true"])
    assert bad.exit_code == 2 and "bad VM name" in bad.output
