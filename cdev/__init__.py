"""cdev: a plugin-based toolkit around a paravirtualized crypto device for QEMU guests."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cdev-toolkit")  # the distribution; the command is `cdev`
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
