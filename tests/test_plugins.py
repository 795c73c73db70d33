"""Plugin discovery, selection, isolation of broken plugins, and the example plugin."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import requires, version
from pathlib import Path

import pytest

from cdev import hookspecs
from tests.cli_helpers import assert_one_line_error, run_cdev

ROOT = Path(__file__).resolve().parents[1]
BUILTINS = {"software", "cryptodev", "virtio", "afalg", "tcp", "unix"}


def plugins_json(env: dict[str, str] | None = None, *args: str) -> list[dict[str, object]]:
    proc = run_cdev(*args, "plugins", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_lists_builtins_with_origin_and_what_they_provide() -> None:
    rows = {p["name"]: p for p in plugins_json()}
    assert set(rows) >= BUILTINS
    for name in BUILTINS:
        assert rows[name]["origin"] == "built-in"
        assert rows[name]["error"] is None
    assert rows["software"]["providers"] == ["software"]
    assert rows["tcp"]["transports"] == ["tcp"]


def test_table_output() -> None:
    proc = run_cdev("plugins")
    assert proc.returncode == 0
    assert b"software" in proc.stdout and b"built-in" in proc.stdout


def test_load_only_named_plugins_by_env_and_option() -> None:
    names = {p["name"] for p in plugins_json({"CDEV_LOAD_PLUGINS": "software"})}
    assert names == {"software"}
    names = {p["name"] for p in plugins_json(None, "--load-plugins", "software,tcp")}
    assert names == {"software", "tcp"}
    assert plugins_json({"CDEV_LOAD_PLUGINS": ""}) == []


def test_block_plugins_by_env_and_option() -> None:
    names = {p["name"] for p in plugins_json({"CDEV_BLOCK_PLUGINS": "afalg,cryptodev"})}
    assert "afalg" not in names and "cryptodev" not in names and "software" in names
    names = {p["name"] for p in plugins_json(None, "--block-plugins=virtio")}
    assert "virtio" not in names
    # A blocked provider is then unknown, with one clear line.
    proc = run_cdev("--block-plugins", "software", "session", "info")
    assert "unknown provider 'software'" in assert_one_line_error(proc, 2)


def make_dist(site: Path, dist: str, module: str, source: str, plugin: str | None = None) -> None:
    """A minimal installed distribution with a ``cdev`` entry point, as pip would leave it."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[cdev]\n{plugin or dist} = {module}\n")


def provider_plugin(provider: str) -> str:
    return (
        "from cdev.hookspecs import hookimpl\n"
        "from cdev_plugins.software import SoftwareProvider\n"
        "@hookimpl\n"
        "def cdev_register_providers(register):\n"
        f"    register({provider!r}, 'test', lambda arg: SoftwareProvider())\n"
    )


def test_two_distributions_with_one_plugin_name_are_reported(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    make_dist(first, "dup-one", "dup_one", provider_plugin("from-one"), plugin="dup")
    make_dist(second, "dup-two", "dup_two", provider_plugin("from-two"), plugin="dup")
    for order, kept, dropped in ((first, second), "one", "two"), ((second, first), "two", "one"):
        env = {"PYTHONPATH": os.pathsep.join(map(str, order))}
        proc = run_cdev("plugins", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        err = proc.stderr.decode()
        assert err.count("cdev: warning:") == 1, err
        assert "plugin name 'dup' is claimed by two distributions" in err
        assert f"loading dup-{kept} 1.0 (dup_{kept}" in err
        assert f"ignoring dup-{dropped} 1.0 (dup_{dropped}" in err
        rows = {p["name"]: p for p in json.loads(proc.stdout)}
        assert rows["dup"]["origin"] == f"distribution dup-{kept}"
        assert rows["dup"]["providers"] == [f"from-{kept}"]
        # Blocking the name silences the clash; other commands report it too.
        proc = run_cdev("plugins", env={**env, "CDEV_BLOCK_PLUGINS": "dup"})
        assert proc.returncode == 0 and b"warning" not in proc.stderr
        proc = run_cdev("session", "selftest", "--provider", f"from-{kept}", env=env)
        assert proc.returncode == 0 and b"claimed by two distributions" in proc.stderr


def test_stale_metadata_for_the_same_module_is_one_plugin(tmp_path: Path) -> None:
    # What a venv keeps from before the rename to cdev-toolkit: a "cdev" distribution
    # listing the same built-in modules. Same code, so no clash, and still built-in.
    info = tmp_path / "cdev-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cdev\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[cdev]\nsoftware = cdev_plugins.software\n")
    proc = run_cdev("plugins", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0 and proc.stderr == b""
    rows = {p["name"]: p for p in json.loads(proc.stdout)}
    assert rows["software"]["origin"] == "built-in"


def test_a_third_party_plugin_cannot_take_a_builtin_name(tmp_path: Path) -> None:
    make_dist(tmp_path, "impostor", "impostor", provider_plugin("evil"), plugin="software")
    proc = run_cdev("plugins", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0
    assert b"ignoring impostor 1.0" in proc.stderr
    rows = {p["name"]: p for p in json.loads(proc.stdout)}
    assert rows["software"]["origin"] == "built-in"
    assert rows["software"]["providers"] == ["software"]


def test_broken_plugins_are_reported_and_everything_else_works(tmp_path: Path) -> None:
    make_dist(tmp_path, "broken-import", "broken_import", "raise RuntimeError('boom at import')\n")
    make_dist(
        tmp_path,
        "broken-hook",
        "broken_hook",
        "from cdev.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def cdev_register_providers(register):\n"
        "    raise ValueError('bad hook')\n",
    )
    make_dist(
        tmp_path,
        "misspelled",
        "misspelled",
        "from cdev.hookspecs import hookimpl\n@hookimpl\ndef cdev_register_provider(register):\n"
        "    pass\n",
    )
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_cdev("session", "selftest", "--provider", "software", env=env)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert "plugin 'broken-import' failed to import" in err and "boom at import" in err
    assert "plugin 'broken-hook' failed in cdev_register_providers" in err and "bad hook" in err
    assert "plugin 'misspelled' implements unknown hook(s) cdev_register_provider" in err
    assert "Traceback" not in err
    rows = {p["name"]: p for p in plugins_json(env)}
    assert rows["broken-import"]["error"] and rows["broken-import"]["origin"] == (
        "distribution broken-import"
    )
    assert rows["software"]["error"] is None
    # Blocking the broken plugin silences it.
    proc = run_cdev("plugins", env={**env, "CDEV_BLOCK_PLUGINS": "broken-import"})
    assert b"boom" not in proc.stderr


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example third-party plugin, installed for real by pip from its own directory."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "plugins" / "cdev-trace-provider"),
        ],
        check=True,
        capture_output=True,
    )
    return target


def test_example_plugin_is_discovered_through_its_entry_point(example_site: Path) -> None:
    rows = {p["name"]: p for p in plugins_json({"PYTHONPATH": str(example_site)})}
    assert rows["trace"]["origin"] == "distribution cdev-trace-provider"
    assert rows["trace"]["version"] == "0.1.0"
    assert rows["trace"]["providers"] == ["trace"]


def test_example_plugin_works_in_crypt(example_site: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(example_site), "CDEV_PASSPHRASE": "pw"}
    src = tmp_path / "f"
    src.write_bytes(b"z" * 300_000)
    proc = run_cdev(
        "crypt", "encrypt", str(src), "--provider", "trace:software", "--work-factor", "10", env=env
    )
    assert proc.returncode == 0, proc.stderr
    # Suite 2: five chunks and the header, each one AES-GCM operation.
    assert re.search(rb"trace\[software\]: aead_encrypt: 6 ops, 300016 bytes", proc.stderr)
    # What it produced is an ordinary cdev file: the built-in provider decrypts it.
    out = tmp_path / "g"
    proc = run_cdev("crypt", "decrypt", str(src) + ".cdev", "-o", str(out), env=env)
    assert proc.returncode == 0 and out.read_bytes() == src.read_bytes()
    proc = run_cdev("session", "selftest", "--provider", "trace", env=env)
    assert proc.returncode == 0


def _runtime_deps() -> list[str]:
    """The distribution's own runtime requirements (no extras), plus setuptools to build it."""
    names = ["setuptools"]
    for req in requires("cdev-toolkit") or []:
        if "extra ==" not in req:
            names.append(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])
    return names


RUNTIME_DEPS = _runtime_deps()


def _copy_sources(dst: Path) -> Path:
    """What building the distribution needs, away from the work tree (no build/ left there)."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(ROOT / "cdev", dst / "cdev", ignore=ignore)
    shutil.copytree(ROOT / "plugins", dst / "plugins", ignore=ignore)
    return dst


@pytest.mark.slow
def test_fresh_venv_installs_cdev_and_the_example_plugin_without_the_index(
    tmp_path: Path,
) -> None:
    """The example plugin's dependency is satisfied by this project, not by the unrelated
    ``cdev`` on the package index: with the index switched off, both install and work."""
    wheels = tmp_path / "wheels"
    # The only step that uses the index: the project's own dependencies, at the versions
    # this environment runs, as wheels (the project and the plugin are not among them).
    pins = [f"{name}=={version(name)}" for name in RUNTIME_DEPS]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", wheels, *pins],
        check=True,
        capture_output=True,
    )
    assert not any(p.name.lower().startswith(("cdev-", "cdev_")) for p in wheels.iterdir())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    offline = ["--no-index", "--find-links", str(wheels), "--no-build-isolation", "-q"]
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", *offline]
    src = _copy_sources(tmp_path / "src")
    subprocess.run([*pip, pins[0]], check=True, capture_output=True)  # venv bundles an old one
    for target in (src, src / "plugins" / "cdev-trace-provider"):
        proc = subprocess.run([*pip, target], capture_output=True, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
    listed = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "list", "--format=json"],
        capture_output=True,
        check=True,
    )
    names = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert {"cdev-toolkit", "cdev-trace-provider"} <= names and "cdev" not in names
    cdev = str(venv / "bin" / "cdev")
    proc = subprocess.run([cdev, "plugins", "--json"], capture_output=True, check=True)
    assert proc.stderr == b""
    rows = {p["name"]: p for p in json.loads(proc.stdout)}
    assert rows["trace"]["origin"] == "distribution cdev-trace-provider"
    assert rows["software"]["origin"] == "built-in"
    proc = subprocess.run([cdev, "session", "selftest", "--provider", "trace"], check=False)
    assert proc.returncode == 0


def test_plugin_commands_hook(tmp_path: Path) -> None:
    make_dist(
        tmp_path,
        "hello-cmd",
        "hello_cmd",
        "import typer\nfrom cdev.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def cdev_register_commands(app):\n"
        "    @app.command()\n"
        "    def hello(name: str = 'world') -> None:\n"
        "        '''Say hello.'''\n"
        "        print(f'hello {name}')\n",
    )
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_cdev("hello", "--name", "plugin", env=env)
    assert proc.returncode == 0 and proc.stdout == b"hello plugin\n"
    rows = {p["name"]: p for p in plugins_json(env)}
    assert rows["hello-cmd"]["commands"] == ["hello"]


def test_transport_hook_registers_builtins() -> None:
    # cdev_register_transports: the built-in tcp and unix transports come through it.
    from cdev.plugins import load_registry

    reg = load_registry()
    assert {"tcp", "unix"} <= set(reg.transports)
    assert reg.transports["unix"].plugin == "unix"


def test_version_and_help_examples() -> None:
    proc = run_cdev("--version")
    assert proc.returncode == 0 and proc.stdout.startswith(b"cdev ")
    proc = run_cdev("--help")
    assert proc.returncode == 0 and b"Example:" in proc.stdout
    commands = [
        "crypt encrypt",
        "crypt decrypt",
        "session info",
        "session selftest",
        "plugins",
        "chat listen",
        "chat connect",
        "chat broker",
        "chat join",
        "nodes create",
        "nodes list",
        "nodes remove",
        "kernel build",
        "kernel load",
        "kernel unload",
        "qemu build",
        "qemu path",
        "vm run",
        "vm demo",
        "vq-trace",
    ]
    for cmd in (c.split() for c in commands):
        proc = run_cdev(*cmd, "--help")
        assert proc.returncode == 0 and b"Example:" in proc.stdout, cmd


HOOKS = [
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("cdev_")
]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_and_tested(hook: str) -> None:
    # As datasette does: a new hook without docs or tests fails the build.
    assert (getattr(hookspecs, hook).__doc__ or "").strip(), f"{hook} has no docstring"
    assert hook in (ROOT / "docs" / "plugins.md").read_text(), f"{hook} not in docs/plugins.md"
    tests = "".join(
        p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_plugins.py"
    )
    tests += (ROOT / "tests" / "test_plugins.py").read_text().split("HOOKS = ")[0]
    assert hook in tests, f"no test mentions {hook}"
