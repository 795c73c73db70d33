"""The booted guest shared by every VM test: one boot per test session.

``guest`` is a :class:`cdev.vm.guest.Guest` with our QEMU (``ensure_qemu()``, or
``$CDEV_QEMU``), the virtio-cryptodev device when that QEMU has it, our module loaded,
QEMU's upstream virtio-crypto device for side-by-side runs, and the guest ports in
:data:`GUEST_PORTS` forwarded from free ports on 127.0.0.1 (``guest.host_port(7000)``),
and the device's QEMU trace events in ``guest.trace_log``.

    def test_x(guest):
        status, out, err = guest.run("cdev session info --provider virtio", timeout=60)
        (guest.shared_dir / "in.txt").write_text("same path on both sides")
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cdev.vm.guest import UPSTREAM_VIRTIO_CRYPTO, Guest

# Guest ports forwarded for tests (chat listeners, echo servers); host ports are free ones.
GUEST_PORTS = (7000, 7001, 7002, 7003)
# Our device's QEMU trace events, logged to guest.trace_log (for vq-trace and queue tests).
TRACE = ("virtio_cryptodev_*",)


@pytest.fixture(scope="session")
def guest(request: pytest.FixtureRequest) -> Iterator[Guest]:
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")

    def say(text: str, fraction: float | None) -> None:
        # Progress on the long steps (QEMU build, boot) even while output is captured.
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"vm: {text}")
        else:
            reporter.write_line(f"vm: {text}")

    g = Guest(
        ports=[(0, p) for p in GUEST_PORTS],
        extra_args=UPSTREAM_VIRTIO_CRYPTO,
        trace=TRACE,
        progress=say,
    )
    g.start()
    try:
        say(
            f"booted {g.release} in {g.boot_seconds:.1f} s ({g.accel}); "
            f"device: {'yes' if g.cryptodev else 'no'}; "
            f"module: {g.module_error or 'loaded' if g.module else 'none'}; "
            f"console log: {g.console_log}",
            None,
        )
        yield g
    finally:
        g.close()
