#!/usr/bin/env python3
"""``cdev crypt`` (suite 2, AES-256-GCM STREAM) against age and against copying the file.

Side by side in one run: ``cp``, ``age`` (X25519 recipient, ChaCha20-Poly1305 STREAM),
``cdev crypt`` suite 2 and suite 1 with a key file, each encrypting and decrypting the
same file, contenders interleaved and their order rotated on every repeat (the CPU is
shared with other work: interleaving spreads the noise over everyone). Every output is
checked (decryptions must give the input back). Peak RSS comes from GNU time.

By default the files live in a fresh directory under /dev/shm: all reads and writes stay
in the page cache (warm, no writeback), and cdev's own fsync of its output is free there,
as it is not for the contenders on a disk.

Every contender writes a new output file: the previous repeat's is deleted before the run,
untimed (``--outputs fresh``, the default). With ``--outputs replace`` it is left in place:
``cp`` and ``age`` then truncate it and reuse its freed pages at once, while cdev writes a
temporary file beside it and renames it over the old one, so it needs a second file's
worth of new pages for a moment. Where new pages come from matters on a VM that reports
free memory to its host: see docs/benchmarks/crypt.md.

--markdown also draws the figure next to it (.png; --plot-out FILE.png to choose), and
``--from-json FILE`` redraws it from results saved with ``--json`` without running anything.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import figures

GNU_TIME = "/usr/bin/time"
CDEV = str(Path(sys.executable).with_name("cdev"))


@dataclass
class Run:
    wall: float
    user: float
    sys: float
    rss_kib: int


@dataclass
class Contender:
    label: str
    argv: Callable[[Path], list[str]]
    output: str  # file name in the work dir
    check: str  # "input": output equals the input; "" nothing to compare
    runs: list[Run] = field(default_factory=list)


def measured(argv: list[str]) -> Run:
    with tempfile.NamedTemporaryFile("w+") as stats:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [GNU_TIME, "-f", "%M %U %S", "-o", stats.name, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.decode(errors='replace')}")
        rss, user, sys_ = stats.read().split()[-3:]
    return Run(wall, float(user), float(sys_), int(rss))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def conditions(work: Path) -> dict[str, str]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True)
    age = subprocess.run(["age", "--version"], capture_output=True, text=True).stdout.strip()
    from cryptography.hazmat.backends.openssl.backend import backend

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": backend.openssl_version_text(),
        "age": age,
        "filesystem": f"{work} ({fs.stdout.strip()})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="input size (K/M/G suffixes), default 1G")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm", help="where the work directory is made")
    ap.add_argument("--markdown", help="append the result table to this file")
    ap.add_argument("--json", help="write all runs as JSON to this file")
    ap.add_argument("--outputs", choices=("fresh", "replace"), default="fresh",
                    help="delete each output before its next run (default) or leave it to "
                         "be replaced")  # fmt: skip
    figures.add_options(ap)
    args = ap.parse_args()
    if args.from_json:
        sys.exit(figures.from_json(args, plot))
    for tool in ("age", "age-keygen", GNU_TIME, "cp"):
        if not shutil.which(tool):
            raise SystemExit(f"crypt_bench: {tool} is missing (scripts/bootstrap installs it)")
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="cdev-crypt-bench-", dir=args.dir))
    try:
        plot_out = args.plot_out or (Path(args.markdown).with_suffix(".png") if args.markdown
                                     else None)  # fmt: skip
        run_bench(work, size, args.repeats, args.markdown, args.json, plot_out, args.outputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compile_cdev() -> str:
    """Byte-compile cdev's modules, as installing a copy does: with PYTHONDONTWRITEBYTECODE
    set (or a read-only tree) an editable install would compile them on every run."""
    import cdev_plugins

    import cdev

    for pkg in (cdev, cdev_plugins):
        assert pkg.__file__ is not None  # both are regular packages
        compileall.compile_dir(Path(pkg.__file__).parent, quiet=1)
    return "cdev's modules byte-compiled before the run"


def run_bench(work: Path, size: int, repeats: int, md_path: str | None, js: str | None,
              plot_out: Path | None, outputs: str) -> None:  # fmt: skip
    cond = conditions(work)
    cond["bytecode"] = compile_cdev()
    cond["outputs"] = (
        "each contender writes a new file (the previous one deleted, untimed)"
        if outputs == "fresh"
        else "each contender replaces its output of the previous repeat"
    )
    plain = work / "input.bin"
    with open(plain, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            f.write(block)
            left -= len(block)
    digest = sha256(plain)
    key = work / "key"
    key.write_text(os.urandom(32).hex() + "\n")
    ident = work / "age-identity.txt"
    subprocess.run(["age-keygen", "-o", str(ident)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(ident)], check=True, capture_output=True, text=True
    ).stdout.strip()

    def cdev(*a: str) -> Callable[[Path], list[str]]:
        return lambda w: [CDEV, "crypt", *a, "--key-file", str(w / "key"), "--force"]

    enc = [
        Contender("cp", lambda w: ["cp", str(w / "input.bin"), str(w / "cp.out")], "cp.out",
                  "input"),
        Contender("age encrypt", lambda w: ["age", "-r", recipient, "-o", str(w / "age.age"),
                                            str(w / "input.bin")], "age.age", ""),
        Contender("cdev encrypt (suite 2)", lambda w: cdev("encrypt", str(w / "input.bin"), "-o",
                                                           str(w / "s2.cdev"))(w), "s2.cdev", ""),
        Contender("cdev encrypt (suite 1)", lambda w: cdev("encrypt", str(w / "input.bin"), "-o",
                                                           str(w / "s1.cdev"), "--suite", "1")(w),
                  "s1.cdev", ""),
    ]  # fmt: skip
    dec = [
        Contender("age decrypt", lambda w: ["age", "-d", "-i", str(ident), "-o",
                                            str(w / "age.out"), str(w / "age.age")], "age.out",
                  "input"),
        Contender("cdev decrypt (suite 2)", lambda w: cdev("decrypt", str(w / "s2.cdev"), "-o",
                                                           str(w / "s2.out"))(w), "s2.out",
                  "input"),
        Contender("cdev decrypt (suite 1)", lambda w: cdev("decrypt", str(w / "s1.cdev"), "-o",
                                                           str(w / "s1.out"))(w), "s1.out",
                  "input"),
    ]  # fmt: skip
    everyone = enc + dec
    print(json.dumps(cond, indent=2), file=sys.stderr)
    # What every invocation costs before any data moves (interpreter, imports, plugin
    # discovery; age's is a Go binary's): both encrypting an empty file, interleaved.
    (work / "empty").write_bytes(b"")
    startup = [
        Contender("age", lambda w: ["age", "-r", recipient, "-o", str(w / "empty.age"),
                                    str(w / "empty")], "empty.age", ""),
        Contender("cdev", lambda w: cdev("encrypt", str(w / "empty"), "-o",
                                         str(w / "empty.cdev"))(w), "empty.cdev", ""),
    ]  # fmt: skip
    for _ in range(2 * repeats):
        for c in startup:
            c.runs.append(measured(c.argv(work)))
    for r in range(repeats):
        # Encryptions first (decryptions need their output), each group rotated per repeat.
        for group in (enc, dec):
            shift = r % len(group)
            for c in group[shift:] + group[:shift]:
                if outputs == "fresh":
                    (work / c.output).unlink(missing_ok=True)
                run = measured(c.argv(work))
                c.runs.append(run)
                if c.check == "input" and sha256(work / c.output) != digest:
                    raise SystemExit(f"crypt_bench: {c.label} did not give the input back")
                print(f"repeat {r + 1}/{repeats}: {c.label:24} {run.wall:6.2f} s "
                      f"user {run.user:5.2f} sys {run.sys:5.2f} rss {run.rss_kib / 1024:6.1f} MiB",
                      file=sys.stderr)  # fmt: skip
    cond["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = report(cond, everyone, size, repeats, startup)
    print(table)
    if md_path:
        with open(md_path, "a") as out:
            out.write(table + "\n")
    result = {"conditions": cond, "size": size,
              "runs": {c.label: [r.__dict__ for r in c.runs] for c in everyone},
              "startup": {c.label: [r.__dict__ for r in c.runs] for c in startup}}  # fmt: skip
    if js:
        Path(js).write_text(json.dumps(result, indent=2))
    if plot_out:
        figures.draw(result, plot_out, plot)


def summary(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per contender: median/min/max wall s, median user+sys s, peak RSS MiB. From the runs
    when the result has them, else the recorded ``summary`` (tables in docs keep only that)."""
    if "runs" not in result:
        return {str(k): {f: float(v[f]) for f in ("median_s", "min_s", "max_s", "cpu_s")}
                for k, v in result["summary"].items()}  # fmt: skip
    out = {}
    for label, runs in result["runs"].items():
        walls = [float(r["wall"]) for r in runs]
        out[str(label)] = {
            "median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "cpu_s": statistics.median(float(r["user"]) + float(r["sys"]) for r in runs),
        }  # fmt: skip
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """Wall time (median, min-max) with CPU time beside it, and MB/s, per contender."""
    cond: dict[str, str] = result["conditions"]
    size = int(result["size"])
    rows = summary(result)
    if not rows or size <= 0:
        raise ValueError("no contenders or no size")
    names = list(rows)
    title = (
        f"cdev crypt against age and cp, {figures.size_label(size)} file, {cond['date']}\n"
        f"{cond['machine']}, {cond['filesystem']}, load average at start "
        f"{cond['load average at start']}"
    )
    fig, (left, right) = figures.new(2, title)
    med = [rows[n]["median_s"] for n in names]
    figures.bars(left, names, med, low=[rows[n]["min_s"] for n in names],
                 high=[rows[n]["max_s"] for n in names], fmt="{:.2f}", width=0.55, shift=-0.15,
                 ylabel="seconds (lower is better)", label="wall s (median, whiskers min-max)",
                 title="time per contender: wall and CPU")  # fmt: skip
    figures.bars(left, names, [rows[n]["cpu_s"] for n in names], fmt="{:.2f}", width=0.3,
                 shift=0.28, colour="dimgrey", label="user+sys CPU s (median)", rotation=90,
                 ylabel="seconds (lower is better)",
                 title="time per contender: wall and CPU")  # fmt: skip
    figures.legend_on_top(left)
    figures.bars(right, names, [size / t / 1e6 for t in med], fmt="{:,.0f}",
                 ylabel="MB/s (10^6 B/s, higher is better)",
                 title="throughput at the median wall time")  # fmt: skip
    figures.save(fig, path)


def report(cond: dict[str, str], everyone: list[Contender], size: int, repeats: int,
           startup: list[Contender]) -> str:  # fmt: skip
    by = {c.label: c for c in everyone}
    lines = [f"### {size / (1 << 30):g} GiB, {repeats} interleaved repeats", ""]
    lines += [f"- {k}: {v}" for k, v in cond.items()]
    lines += [
        "",
        "| contender | median s | min-max s | MB/s (median) | user+sys s (median) | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in everyone:
        walls = [r.wall for r in c.runs]
        med = statistics.median(walls)
        cpu = statistics.median(r.user + r.sys for r in c.runs)
        rss = max(r.rss_kib for r in c.runs) / 1024
        lines.append(
            f"| {c.label} | {med:.2f} | {min(walls):.2f}-{max(walls):.2f} | "
            f"{size / med / 1e6:.0f} | {cpu:.2f} | {rss:.1f} |"
        )

    def ratios(a: str, b: str) -> list[float]:
        # Per repeat: runs of the same repeat were close in time, so compare them pairwise.
        return [x.wall / y.wall for x, y in zip(by[a].runs, by[b].runs, strict=True)]

    def fmt(values: list[float]) -> str:
        return f"median {statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"

    def best_ratio(a: str, b: str) -> str:
        return f"{min(r.wall for r in by[a].runs) / min(r.wall for r in by[b].runs):.2f}"

    # Noise on a shared machine only ever adds time, so each contender's best run is the
    # closest to what it costs by itself (what timeit reports); the pairwise medians below
    # show what this machine's load made of it.
    lines += [
        "",
        f"Best of {repeats} (each contender's fastest run):",
        "",
        "- suite 2 encrypt throughput ÷ age's: "
        + best_ratio("age encrypt", "cdev encrypt (suite 2)"),
        "- suite 2 decrypt throughput ÷ age's: "
        + best_ratio("age decrypt", "cdev decrypt (suite 2)"),
        "- suite 2 encrypt time ÷ cp's: " + best_ratio("cdev encrypt (suite 2)", "cp"),
        "- suite 2 decrypt time ÷ cp's: " + best_ratio("cdev decrypt (suite 2)", "cp"),
        "",
        "Pairwise per repeat (same repeat, so under the same load):",
        "",
        "- suite 2 encrypt throughput ÷ age's: "
        + fmt(ratios("age encrypt", "cdev encrypt (suite 2)")),
        "- suite 2 decrypt throughput ÷ age's: "
        + fmt(ratios("age decrypt", "cdev decrypt (suite 2)")),
        "- suite 2 encrypt time ÷ cp's: " + fmt(ratios("cdev encrypt (suite 2)", "cp")),
        "- suite 2 decrypt time ÷ cp's: " + fmt(ratios("cdev decrypt (suite 2)", "cp")),
        "- suite 2 encrypt throughput ÷ suite 1's: "
        + fmt(ratios("cdev encrypt (suite 1)", "cdev encrypt (suite 2)")),
        "- suite 2 decrypt throughput ÷ suite 1's: "
        + fmt(ratios("cdev decrypt (suite 1)", "cdev decrypt (suite 2)")),
        "",
        f"Start-up, encrypting an empty file ({len(startup[0].runs)} interleaved runs each, "
        "medians):",
        "",
    ]
    for c in startup:
        lines.append(
            f"- {c.label}: {statistics.median(r.wall for r in c.runs):.3f} s wall, "
            f"{statistics.median(r.user + r.sys for r in c.runs):.3f} s user+sys, "
            f"peak RSS {max(r.rss_kib for r in c.runs) / 1024:.1f} MiB"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
