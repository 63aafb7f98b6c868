"""What several benches share: the ``--model``/``--data`` options, the bundle's test faces, and
which CPU ran them and what else the machine was doing.

Benches are run as scripts (``python bench/bench_x.py``), so this module is imported as
``_common`` from the script's own directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "models" / "celebs8"
DEFAULT_DATA = Path(os.environ.get("CELEBXAI_DATA", ROOT.parent / "shared" / "data"))


def add_bundle_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--model`` (bundle directory) and ``--data`` (face data root) to ``parser``."""
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_BUNDLE,
        help="bundle directory (default: models/celebs8)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="face data root with celebs8/ (default: ../shared/data)",
    )
    return parser


def split_items(bundle: Path, split: str = "test") -> list[tuple[str, int]]:
    """Every ``(path under celebs8/, class index)`` of ``split`` in the bundle's split.json."""
    return [
        (relative, int(label))
        for relative, label in json.loads((bundle / "split.json").read_text())["splits"][split]
    ]


def spread(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items`` (all of them when ``count`` is larger)."""
    return items[:: max(1, len(items) // max(count, 1))][:count]


def busiest_processes(
    exclude: set[int], seconds: float = 1.0, top: int = 5
) -> list[tuple[str, float]]:
    """The ``top`` processes by CPU share over ``seconds`` (percent of one core), except
    ``exclude``: what else was running while a bench measured."""
    processes = [p for p in psutil.process_iter(["name", "cmdline"]) if p.pid not in exclude]
    for process in processes:
        try:
            process.cpu_percent(None)
        except psutil.Error:
            continue
    time.sleep(seconds)
    shares = []
    for process in processes:
        try:
            command = " ".join(process.info["cmdline"] or [process.info["name"]])
            shares.append((f"{command[:48]} [{process.pid}]", process.cpu_percent(None)))
        except psutil.Error:
            continue
    return [share for share in sorted(shares, key=lambda s: -s[1])[:top] if share[1] >= 1.0]


def machine_load(exclude: set[int]) -> str:
    """Load average (1, 5, 15 min) and the busiest other processes, in one line."""
    busy = ", ".join(f"{name} {share:.0f}%" for name, share in busiest_processes(exclude))
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"load average {load}; busiest other processes: {busy or 'none above 1%'}"


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it (``/proc/cpuinfo``), or the platform's word for
    it where that file is missing: timings say which CPU made them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"
