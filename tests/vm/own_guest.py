"""A guest of a test module's own, for tests that unbind, reload or add devices."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cdev.errors import CdevError
from cdev.vm.guest import Guest


@contextmanager
def own_guest(**kwargs: Any) -> Iterator[Guest]:
    """Boot a guest with our device and module (``kwargs`` go to :class:`Guest`); one that
    cannot boot or load the module is a failure, never a skip."""
    try:
        g = Guest(cryptodev=True, module=True, **kwargs)
        g.start()
    except CdevError as exc:
        pytest.fail(f"cannot boot a guest with the device: {exc}")
    try:
        if g.module_error:
            pytest.fail(f"module did not load: {g.module_error}")
        yield g
    finally:
        g.close()
