"""cdev: a plugin-based toolkit around a paravirtualized crypto device for QEMU guests."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Looked up on first use only: importing importlib.metadata costs more start-up time
    # than ``cdev crypt`` on a small file (see cdev.plugin_index).
    if name != "__version__":
        raise AttributeError(f"module 'cdev' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("cdev-toolkit")  # the distribution; the command is `cdev`
    except PackageNotFoundError:  # running from a source tree that is not installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
