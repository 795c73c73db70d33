"""``cdev crypt`` runs without typer for ordinary command lines, and hands everything else
to typer: the two must agree on what the command line means."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdev.crypt_run import CryptArgs
from cdev.fastpath import OPTIONS, parse_crypt
from tests.cli_helpers import CDEV, assert_one_line_error, run_cdev
from tests.test_plugins import make_dist

KEY = "11" * 32


def typer_command(sub: str) -> Any:
    from cdev.cli import _load_builtin

    return _load_builtin("crypt").commands[sub]


@pytest.mark.parametrize("sub", ["encrypt", "decrypt"])
def test_the_fast_parser_knows_exactly_typers_options(sub: str) -> None:
    declared: dict[str, tuple[str, bool]] = {}
    arguments = []
    for param in typer_command(sub).params:
        if param.param_type_name == "argument":
            arguments.append(param.name)
            continue
        for spelling in param.opts + param.secondary_opts:
            declared[spelling] = (param.name, not param.is_flag)
    assert arguments == ["input_name"]
    assert declared == OPTIONS[sub]
    # Same defaults, so that an option left out means the same on both paths.
    defaults = {f.name: f.default for f in dataclasses.fields(CryptArgs)}
    for param in typer_command(sub).params:
        if param.param_type_name == "option":
            assert param.default == defaults[param.name], param.name


def test_what_the_fast_parser_takes_and_leaves_to_typer() -> None:
    got = parse_crypt(["encrypt", "in", "--output=out", "-p", "afalg", "-f", "--work-factor", "12"])
    assert got == {
        "encrypt": True,
        "input_name": "in",
        "output": "out",
        "provider": "afalg",
        "force": True,
        "work_factor": 12,
    }
    got = parse_crypt(["decrypt", "-", "-o", "-", "--key-file", "k"])
    assert got == {"encrypt": False, "input_name": "-", "output": "-", "key_file": Path("k")}
    for argv in (
        [],
        ["encrypt"],  # no input
        ["encrypt", "a", "b"],  # two
        ["encrypt", "a", "--help"],
        ["encrypt", "a", "-h"],
        ["encrypt", "a", "--wrok", "3"],  # a typo
        ["decrypt", "a", "--suite", "2"],  # encrypt's option
        ["encrypt", "a", "-o", "x", "-o", "y"],  # twice
        ["encrypt", "a", "-ox"],  # attached short value
        ["encrypt", "a", "-fo", "x"],  # bundled flags
        ["encrypt", "a", "-o"],  # no value
        ["encrypt", "a", "--output="],  # empty value
        ["encrypt", "a", "--force=1"],  # a flag with a value
        ["encrypt", "a", "--work-factor", "99"],  # out of range: typer says why
        ["encrypt", "a", "--work-factor", "1e3"],
        ["encrypt", "--", "-a"],
        ["list"],
    ):
        assert parse_crypt(argv) is None, argv


def test_provider_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDEV_PROVIDER", "afalg")
    assert parse_crypt(["encrypt", "a"]) == {
        "encrypt": True,
        "input_name": "a",
        "provider": "afalg",
    }
    assert parse_crypt(["encrypt", "a", "-p", "software"])["provider"] == "software"  # type: ignore[index]
    monkeypatch.setenv("CDEV_PROVIDER", "")  # empty: the default, as typer does
    assert "provider" not in parse_crypt(["encrypt", "a"])  # type: ignore[operator]


def imported_modules(proc: subprocess.CompletedProcess[bytes]) -> set[str]:
    names = set()
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def run_importtime(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDEV_")}
    return subprocess.run(
        [sys.executable, "-X", "importtime", CDEV, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        check=False,
        timeout=120,
    )


def test_crypt_does_not_start_the_cli_framework(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY)
    data = os.urandom(100_000)
    (tmp_path / "in").write_bytes(data)
    # The CLI framework, and what only the chat transports (asyncio) or the device
    # providers (ctypes) need: their plugins are not imported.
    heavy = {"typer", "pydantic", "rich", "click", "asyncio", "ctypes"}
    for argv in (
        ["crypt", "encrypt", "in", "-o", "in.cdev", "--key-file", "key"],
        ["crypt", "decrypt", "in.cdev", "--output=out", "--key-file=key", "-f"],
    ):
        proc = run_importtime(*argv, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        top = {m.split(".")[0] for m in imported_modules(proc)}
        assert "cryptography" in top  # the check sees what is imported
        assert not top & heavy, top & heavy
    assert (tmp_path / "out").read_bytes() == data
    # Help and errors are typer's.
    proc = run_importtime("crypt", "encrypt", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and b"--key-file" in proc.stdout
    assert "typer" in {m.split(".")[0] for m in imported_modules(proc)}


def test_command_lines_left_to_typer_mean_what_they_did(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY)
    data = os.urandom(5000)
    (tmp_path / "in").write_bytes(data)
    # Given twice: the last one counts.
    proc = run_cdev(
        "crypt", "encrypt", "in", "-o", "a", "-o", "b", "--key-file", "key", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b").exists() and not (tmp_path / "a").exists()
    # Bundled short flags and an attached value.
    proc = run_cdev("crypt", "decrypt", "b", "-fo", "out", "--key-file", "key", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cdev("crypt", "decrypt", "b", "-fo-", "--key-file", "key", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == data
    proc = run_cdev("crypt", "encrypt", "in", "--work-factor", "99", cwd=tmp_path)
    assert proc.returncode == 2 and b"less than or equal to 18" in proc.stderr
    proc = run_cdev("crypt", "encrypt", "in", "--wrok", cwd=tmp_path)
    assert proc.returncode == 2 and b"No such option: --wrok" in proc.stderr
    # Root options before the command: the plugin selection applies to crypt as well.
    proc = run_cdev(
        "--block-plugins", "software", "crypt", "encrypt", "in", "--key-file", "key", cwd=tmp_path
    )
    assert "unknown provider 'software'" in assert_one_line_error(proc, 2)


def test_errors_on_the_fast_path_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY)
    (tmp_path / "in").write_bytes(b"x")
    proc = run_cdev("crypt", "encrypt", "in", "--key-file", "nokey", cwd=tmp_path)
    assert "cannot read key file nokey" in assert_one_line_error(proc, 2)
    proc = run_cdev("crypt", "encrypt", "in", "--suite", "3", "--key-file", "key", cwd=tmp_path)
    assert "--suite must be auto, 1 or 2" in assert_one_line_error(proc, 2)
    proc = run_cdev(
        "crypt", "encrypt", "in", "--key-file", "key", env={"CDEV_PROVIDER": "nope"}, cwd=tmp_path
    )
    assert "unknown provider 'nope'" in assert_one_line_error(proc, 2)
    proc = run_cdev("crypt", "decrypt", "in", "-o", "out", "--key-file", "key", cwd=tmp_path)
    assert "not a cdev encrypted file" in assert_one_line_error(proc, 1)


def test_a_plugin_that_adds_commands_keeps_crypt_under_typer(tmp_path: Path) -> None:
    # A plugin's command of the same name replaces the built-in one: the fast path must
    # not run the built-in behind its back.
    make_dist(
        tmp_path,
        "my-crypt",
        "my_crypt",
        "import typer\nfrom cdev.hookspecs import hookimpl\n"
        "sub = typer.Typer()\n"
        "@sub.command()\n"
        "def encrypt(name: str) -> None:\n"
        "    print(f'my encrypt {name}')\n"
        "@sub.command()\n"
        "def other() -> None:\n"
        "    pass\n"
        "@hookimpl\n"
        "def cdev_register_commands(app):\n"
        "    app.add_typer(sub, name='crypt')\n",
    )
    proc = run_cdev("crypt", "encrypt", "x", env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"my encrypt x\n"
    assert not (tmp_path / "x.cdev").exists()


def test_builtin_plugins_add_no_commands() -> None:
    # What lets `cdev crypt` import only its provider's plugin when no other is installed.
    from cdev.plugins import BUILTIN_DIST, load_registry

    registry = load_registry()
    assert all(p.origin == "built-in" for p in registry.plugins.values()), BUILTIN_DIST
    assert not registry.adds_commands()


def test_a_third_party_plugin_is_loaded_and_reported_on_crypt_runs(tmp_path: Path) -> None:
    make_dist(tmp_path, "broken-import", "broken_import", "raise RuntimeError('boom')\n")
    (tmp_path / "key").write_text(KEY)
    (tmp_path / "in").write_bytes(b"data")
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_cdev("crypt", "encrypt", "in", "--key-file", "key", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert b"plugin 'broken-import' failed to import" in proc.stderr
    # Blocked, it is not loaded, and crypt is quiet again.
    env["CDEV_BLOCK_PLUGINS"] = "broken-import"
    proc = run_cdev("crypt", "decrypt", "in.cdev", "-o", "out", "--key-file", "key", env=env,
                    cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == b""
    assert (tmp_path / "out").read_bytes() == b"data"


def test_providers_of_other_plugins_still_open(tmp_path: Path) -> None:
    # The provider's name is not a built-in plugin's name: every plugin is loaded.
    (tmp_path / "key").write_text(KEY)
    (tmp_path / "in").write_bytes(b"data")
    proc = run_cdev("crypt", "encrypt", "in", "--key-file", "key", "-p", "nope", cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    assert "unknown provider 'nope' (available: afalg, cryptodev, software, virtio)" in line
