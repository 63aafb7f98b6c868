"""``python -m tests.load``: the CI load test, or a soak run, against the service as the README
starts it.

    python -m tests.load                                     # CI's run: 10 users, 90 s
    python -m tests.load soak --minutes 10 --users 32        # the soak: 32 users, 10 min
    python -m tests.load soak --host http://127.0.0.1:8000   # a running service (no RSS check)

Prints requests, failures by kind, the shed rate, latency per endpoint and the server's RSS
(at start, after warm-up, at the end, its peak and its slope over the last half); writes
rss.csv, rss.png and results.json to --out, and exits 1 when any check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .harness import ROOT, SOAK, LoadConfig, run_load_test, seconds

PRESETS = {"ci": LoadConfig(), "soak": SOAK}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.load",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets: "
        + "; ".join(
            f"{name}: {preset.users} users, {preset.run_time}, warm-up {preset.warmup_s:g} s, "
            f"results in {preset.out_dir.relative_to(ROOT)}"
            for name, preset in PRESETS.items()
        ),
    )
    parser.add_argument(
        "preset",
        nargs="?",
        choices=sorted(PRESETS),
        default="ci",
        help="ci: CI's short run (default); soak: the long run",
    )
    parser.add_argument("-u", "--users", type=int, help="concurrent users")
    parser.add_argument("-r", "--spawn-rate", type=float, help="users started per second")
    duration = parser.add_mutually_exclusive_group()
    duration.add_argument(
        "-t", "--run-time", type=_duration, help="load duration, e.g. 90s, 30m, 2h"
    )
    duration.add_argument("--minutes", type=float, help="load duration in minutes")
    parser.add_argument(
        "--warmup", type=float, dest="warmup_s", help="seconds of load before RSS is judged"
    )
    parser.add_argument(
        "--host",
        default=None,
        help="load this running service instead of starting one on a free "
        "loopback port; its memory is then not checked (default: start one)",
    )
    parser.add_argument(
        "--max-slope",
        type=float,
        dest="rss_slope_limit_mib_per_min",
        help="largest allowed RSS slope over the last half, MiB per minute "
        f"(default: ci {LoadConfig.rss_slope_limit_mib_per_min:g}, "
        f"soak {SOAK.rss_slope_limit_mib_per_min:g})",
    )
    parser.add_argument(
        "--max-peak-ratio",
        type=float,
        dest="rss_peak_ratio_limit",
        help="largest allowed RSS peak over the RSS after warm-up "
        f"(default: {LoadConfig.rss_peak_ratio_limit:g})",
    )
    parser.add_argument(
        "--photos-per-class",
        type=int,
        help=f"face photos per class (default: {LoadConfig.photos_per_class})",
    )
    parser.add_argument(
        "--model", type=Path, help="bundle the local server serves (default: models/celebs8)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="face data root holding celebs8/ (default: $CELEBXAI_DATA or ../shared/data)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        dest="out_dir",
        help="results folder (default: tests/artifacts/load, or .../soak)",
    )
    return parser


def _duration(text: str) -> str:
    try:
        seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def config_of(args: argparse.Namespace) -> LoadConfig:
    """The preset, with every option given on the command line in its place."""
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(LoadConfig)
        if getattr(args, field.name, None) is not None
    }
    if args.minutes is not None:
        given["run_time"] = f"{round(args.minutes * 60)}s"
    return dataclasses.replace(PRESETS[args.preset], **given)


def main(args: argparse.Namespace) -> int:
    result = run_load_test(config_of(args))
    print(result.summary())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
