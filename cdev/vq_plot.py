"""Plots of a virtqueue trace: the latency histogram and throughput over time.

In the terminal with plotext, to an image (PNG or SVG) with matplotlib. Both are in the
``plot`` extra (``pip install 'cdev[plot]'``): tracing itself needs neither.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

from cdev.errors import CdevError, UnavailableError
from cdev.vq_trace import Exchange, percentile


def require_plotting(*, terminal: bool, image: bool) -> None:
    """Fail early (exit 2) when the libraries a plot needs are missing."""
    missing = [
        name
        for name, wanted in (("plotext", terminal), ("matplotlib", image))
        if wanted and importlib.util.find_spec(name) is None
    ]
    if missing:
        raise UnavailableError(f"plotting needs {' and '.join(missing)}: pip install 'cdev[plot]'")


def latencies(rows: Sequence[Exchange]) -> dict[str, list[float]]:
    """Latency in µs per kind of request (CRYPT split by op; the rest together)."""
    out: dict[str, list[float]] = {}
    for ex in rows:
        lat = ex.latency_us
        if lat is None:
            continue
        key = ex.name if ex.cmd == 3 and ex.call == 2 else "other calls"
        out.setdefault(key, []).append(lat)
    return out


def throughput(rows: Sequence[Exchange], buckets: int = 60) -> tuple[list[float], list[float]]:
    """(seconds since the first request, MB/s of CRYPT payload answered OK) per bucket."""
    points = [(ex.time, ex.payload) for ex in rows if ex.time is not None and ex.status == 0]
    if not points:
        return [], []
    t0 = min(t for t, _ in points if t is not None)
    t1 = max(t for t, _ in points if t is not None)
    span = max(t1 - t0, 1e-3)
    width = span / buckets
    sums = [0.0] * buckets
    for t, n in points:
        assert t is not None
        sums[min(int((t - t0) / width), buckets - 1)] += n
    xs = [(i + 0.5) * width for i in range(buckets)]
    return xs, [s / width / 1e6 for s in sums]


def _log_bins(values: list[float], n: int = 30) -> list[float]:
    lo = max(min(values), 1.0)
    hi = max(max(values), lo * 1.01)
    step = (math.log10(hi) - math.log10(lo)) / n
    return [10 ** (math.log10(lo) + i * step) for i in range(n + 1)]


def _no_data(rows: Sequence[Exchange]) -> None:
    if not rows:
        raise CdevError("nothing to plot: no requests in the trace (or none matched --filter)")


def draw_terminal(rows: Sequence[Exchange]) -> None:
    import plotext as plt

    _no_data(rows)
    lat = latencies(rows)
    xs, mbs = throughput(rows)
    plt.clear_figure()
    plt.subplots(2, 1)
    plt.subplot(1, 1)
    plt.title("latency pop -> push (µs)")
    for name, values in sorted(lat.items()):
        plt.hist(values, bins=40, label=name)
    plt.xlabel("µs")
    plt.ylabel("requests")
    plt.subplot(2, 1)
    plt.title("CRYPT throughput (MB/s)")
    if xs:
        plt.plot(xs, mbs, marker="braille")
    plt.xlabel("seconds")
    plt.plotsize(None, None)
    plt.show()


def save_image(rows: Sequence[Exchange], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _no_data(rows)
    lat = latencies(rows)
    xs, mbs = throughput(rows)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), constrained_layout=True)
    if lat:
        bins = _log_bins([v for vs in lat.values() for v in vs])
        for name, values in sorted(lat.items()):
            ax1.hist(values, bins=bins, alpha=0.6, label=f"{name} (n={len(values)})")
        every = sorted(v for vs in lat.values() for v in vs)
        for q, style in ((50, "--"), (99, ":")):
            value = percentile(every, q)
            if value is not None:
                ax1.axvline(value, color="black", linestyle=style, label=f"p{q} {value:.0f} µs")
        ax1.set_xscale("log")
        ax1.legend()
    else:
        ax1.text(0.5, 0.5, "no timestamps in this trace", ha="center", transform=ax1.transAxes)
    ax1.set_title("virtio-cryptodev: latency from pop to push")
    ax1.set_xlabel("latency (µs, log scale)")
    ax1.set_ylabel("requests")
    ax1.grid(True, which="both", alpha=0.3)
    ax2.plot(xs, mbs, drawstyle="steps-mid")
    ax2.set_title("CRYPT payload answered OK")
    ax2.set_xlabel("seconds since the first request")
    ax2.set_ylabel("MB/s")
    ax2.grid(True, alpha=0.3)
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise CdevError(f"{path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
