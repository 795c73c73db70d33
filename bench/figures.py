"""Figures for the benchmark scripts: one place for the matplotlib set-up, the bar and line
charts they share, saving, and the ``--plot-out`` / ``--from-json`` options.

Each script turns its own result structure (the one it writes with ``--json``) into a
figure; ``--from-json`` redraws that figure from saved results without rerunning, which is
how the figures in docs/benchmarks/ are drawn from the recorded tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdev.errors import CdevError
from cdev.vq_plot import require_plotting

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_JSON = 16 << 20  # results are a few KiB; anything this large is not one
# Same colour for a contender in every figure of a script: matplotlib's default cycle without
# its grey (C7), which the scripts keep for secondary bars such as CPU time.
COLOURS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9", "navy")


class BadResults(CdevError):
    """The saved results are not what the script writes."""


def add_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--plot-out", type=Path, help="also draw the results as a PNG figure here")
    ap.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="draw the figure from results saved with --json (no run); PNG next to FILE "
        "unless --plot-out is given",
    )


def load(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or BadResults with one line saying why not."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JSON + 1)
    except OSError as exc:
        raise BadResults(f"{path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_JSON:
        raise BadResults(f"{path}: larger than {MAX_JSON >> 20} MiB, not saved results")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadResults(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadResults(f"{path}: expected a JSON object at the top")
    return data


def new(
    ncols: int, title: str, width: float = 6.0, height: float = 4.8
) -> tuple[Figure, list[Axes]]:
    """A figure with ``ncols`` panels side by side, titled (conditions and date)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), constrained_layout=True,
                             squeeze=False)  # fmt: skip
    fig.suptitle(title, fontsize=10)
    return fig, list(axes[0])


def bars(ax: Axes, labels: Sequence[str], values: Sequence[float], *, ylabel: str, title: str,
         low: Sequence[float] | None = None, high: Sequence[float] | None = None,
         fmt: str = "{:,.0f}", width: float = 0.8, shift: float = 0.0,
         colour: str | None = None, label: str | None = None,
         rotation: float = 0) -> None:  # fmt: skip
    """One bar per contender with its value written on it (unless ``fmt`` is empty; rotated
    90° where bars are narrow); low/high as a range whisker."""
    xs = range(len(labels))
    err = None
    if low is not None and high is not None:
        err = [[v - lo for v, lo in zip(values, low, strict=True)],
               [hi - v for v, hi in zip(values, high, strict=True)]]  # fmt: skip
    colours = [colour or COLOURS[i % 10] for i in xs]
    drawn = ax.bar([x + shift for x in xs], values, width, yerr=err, capsize=4, color=colours,
                   label=label)  # fmt: skip
    if fmt:
        # Inside the bar where it is tall enough to hold the text, just above it otherwise.
        tall = 0.08 * max(max(values, default=0.0), ax.get_ylim()[1])
        pairs = [(fmt.format(v), v >= tall) for v in values]
        ax.bar_label(drawn, labels=[t if inside else "" for t, inside in pairs],
                     label_type="center", fontsize=8, color="white", fontweight="bold",
                     rotation=rotation)  # fmt: skip
        ax.bar_label(drawn, labels=["" if inside else t for t, inside in pairs],
                     label_type="edge", padding=2, fontsize=7, rotation=rotation)  # fmt: skip
    ax.set_xticks(list(xs), labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def legend_on_top(ax: Axes) -> None:
    """A legend in headroom above the tallest bar, never over the bars themselves."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 1.22)
    ax.legend(fontsize=8, loc="upper left", ncols=2)


def size_label(n: int) -> str:
    """64 B, 4 KiB, 1 MiB: request sizes as people write them."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def save(fig: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise CdevError(f"{path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def draw(data: dict[str, Any], path: Path, drawer: Callable[[dict[str, Any], Path], None]) -> None:
    """Run a script's drawer; a structure that is not its results becomes BadResults."""
    require_plotting(terminal=False, image=True)
    try:
        drawer(data, path)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:
        raise BadResults(
            f"not the results this script writes ({type(exc).__name__}: {exc})"
        ) from None


def from_json(args: argparse.Namespace, drawer: Callable[[dict[str, Any], Path], None]) -> int:
    """The ``--from-json`` path: exit 0 with the PNG written, else one line and exit 1/2."""
    src: Path = args.from_json
    out: Path = args.plot_out or src.with_suffix(".png")
    try:
        draw(load(src), out, drawer)
    except BadResults as exc:
        msg = str(exc) if str(exc).startswith(str(src)) else f"{src}: {exc}"
        print(f"cdev: {msg}", file=sys.stderr)
        return 1
    except CdevError as exc:
        print(f"cdev: {exc}", file=sys.stderr)
        return exc.exit_code
    print(out)
    return 0
