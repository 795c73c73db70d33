"""The entry-point cache (cdev.plugin_index): it saves importing importlib.metadata on every
run, and must never hide an installed, changed or removed plugin, nor trust a cache file
someone else could have written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdev import plugin_index
from cdev.plugins import ENTRY_POINT_GROUP
from tests.cli_helpers import run_cdev
from tests.test_plugins import make_dist, provider_plugin

DISCOVER = (
    "import json, sys\n"
    "from cdev.plugins import discover\n"
    "eps, _ = discover()\n"
    "print(json.dumps([sorted(eps), 'importlib.metadata' in sys.modules]))\n"
)


def discover_in_child(cache: Path, cwd: Path | None = None) -> tuple[list[str], bool]:
    proc = subprocess.run(
        [sys.executable, "-c", DISCOVER],
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        cwd=cwd,
        capture_output=True,
        check=True,
    )
    names, imported = json.loads(proc.stdout)
    return names, imported


def test_the_second_run_reads_the_cache_and_finds_the_same(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, scanned = discover_in_child(cache)
    assert scanned and "software" in first
    second, scanned = discover_in_child(cache)
    assert second == first and not scanned, "a cache hit must not import importlib.metadata"
    (f,) = (cache / "cdev").iterdir()
    assert f.stat().st_mode & 0o777 == 0o600
    assert (cache / "cdev").stat().st_mode & 0o777 == 0o700


def test_installed_changed_and_removed_plugins_are_seen_at_once(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    env = {"PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def plugins() -> dict[str, list[str]]:
        proc = run_cdev("plugins", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        return {p["name"]: p["providers"] for p in json.loads(proc.stdout)}

    assert "extra" not in plugins()
    assert "extra" not in plugins()  # now from the cache
    make_dist(site, "extra", "extra_mod", provider_plugin("extra-provider"))
    assert plugins()["extra"] == ["extra-provider"]
    # Edited in place (as a reinstall of the same version may leave it): another name.
    ep = site / "extra-1.0.dist-info" / "entry_points.txt"
    ep.write_text("[cdev]\nrenamed-extra = extra_mod\n")
    got = plugins()
    assert "renamed-extra" in got and "extra" not in got
    for p in (site / "extra-1.0.dist-info").iterdir():
        p.unlink()
    (site / "extra-1.0.dist-info").rmdir()
    assert "renamed-extra" not in plugins()


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def poison(cache_home: Path) -> Path:
    """The cache file, with one more entry naming a module nobody installed."""
    plugin_index.entries(ENTRY_POINT_GROUP)
    (f,) = (cache_home / "cdev").iterdir()
    data = json.loads(f.read_text())
    data["entries"].append(
        {"name": "evil", "value": "evil_mod", "dist": "evil", "version": "1", "location": "/"}
    )
    f.write_text(json.dumps(data))
    return f


def names() -> set[str]:
    return {e.name for e in plugin_index.entries(ENTRY_POINT_GROUP)}


def test_a_cache_file_others_can_write_is_not_trusted(cache_home: Path) -> None:
    f = poison(cache_home)
    f.chmod(0o600)
    assert "evil" in names(), "the poisoned file is read when trusted: the test is sound"
    f = poison(cache_home)
    f.chmod(0o620)
    assert "evil" not in names()
    f = poison(cache_home)
    f.chmod(0o600)
    (cache_home / "cdev").chmod(0o777)
    assert "evil" not in names()


@pytest.mark.parametrize(
    "content", [b"", b"{", b"[]", b'{"stamp": 1}', b"\xff" * 100, b'{"stamp": [], "entries": 5}']
)
def test_a_broken_cache_file_is_a_miss_and_is_rewritten(cache_home: Path, content: bytes) -> None:
    expected = {e.name for e in plugin_index.scan(ENTRY_POINT_GROUP)}
    names()
    (f,) = (cache_home / "cdev").iterdir()
    f.write_bytes(content)
    assert names() == expected
    assert json.loads(f.read_text())["entries"], "rewritten after the miss"


def test_entries_with_wrong_types_are_a_miss(cache_home: Path) -> None:
    f = poison(cache_home)
    data = json.loads(f.read_text())
    data["entries"][-1]["value"] = ["evil_mod"]
    f.write_text(json.dumps(data))
    assert "evil" not in names()


def test_no_cache_when_it_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert names() == {e.name for e in plugin_index.scan(ENTRY_POINT_GROUP)}
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # ignored, as XDG says
    assert "software" in names()
    assert not Path("relative").exists()


def test_a_removed_working_directory_is_no_cache(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", f"import os; os.rmdir({str(gone)!r}); exec({DISCOVER!r})"],
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        cwd=gone,
        capture_output=True,
        check=True,
    )
    found, _ = json.loads(proc.stdout)
    assert "software" in found


def test_loading_matches_importlib_metadata() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        (mine,) = [e for e in plugin_index.scan(ENTRY_POINT_GROUP) if e.value == ep.value][:1]
        assert mine.load() is ep.load()
    with pytest.raises(ValueError, match="malformed"):
        plugin_index.PluginEntry("x", "not a module!", None, "?", "?").load()
    dotted = plugin_index.PluginEntry("x", "os.path : join", None, "?", "?")
    assert dotted.load() is os.path.join


def test_old_cache_files_are_pruned(cache_home: Path) -> None:
    d = cache_home / "cdev"
    d.mkdir(parents=True, mode=0o700)
    for i in range(plugin_index.KEEP + 10):
        f = d / f"plugins-{i:08x}.json"
        f.write_text("{}")
        os.utime(f, ns=(i * 10**9, i * 10**9))
    names()  # a miss: written, and the oldest removed
    left = sorted(p.name for p in d.glob("plugins-*.json"))
    assert len(left) == plugin_index.KEEP
    assert "plugins-00000000.json" not in left and f"plugins-{41:08x}.json" in left


def test_nothing_is_written_into_another_users_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root with another user's HOME (sudo keeping it): no root-owned files there.
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory another user owns")
    home = tmp_path / "someone"
    home.mkdir()
    os.chown(home, 65534, 65534)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    assert "software" in names()
    assert list(home.iterdir()) == []
