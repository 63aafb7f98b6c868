"""``python -m tests.load``: the CI load test with your own duration and users (a soak run).

    python -m tests.load --run-time 30m --users 20           # local server, RSS checked
    python -m tests.load --host http://127.0.0.1:8000 -t 1h  # a running service (no RSS check)

Prints the summary and exits 1 when any check failed; results go to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .harness import LoadConfig, run_load_test, seconds

DEFAULTS = LoadConfig()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.load", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("-u", "--users", type=int, default=DEFAULTS.users,
                        help=f"concurrent users (default: {DEFAULTS.users})")
    parser.add_argument("-r", "--spawn-rate", type=float, default=DEFAULTS.spawn_rate,
                        help=f"users started per second (default: {DEFAULTS.spawn_rate:g})")
    parser.add_argument("-t", "--run-time", type=_duration, default=DEFAULTS.run_time,
                        help=f"load duration, e.g. 45s, 30m, 2h (default: {DEFAULTS.run_time})")
    parser.add_argument("--host", default=None,
                        help="load this running service instead of starting one on a free "
                        "loopback port; its memory is then not checked (default: start one)")
    parser.add_argument("--rss-growth-mib", type=float, default=DEFAULTS.rss_growth_limit_mib,
                        help="largest allowed growth of the server's RSS peak from the first to "
                        f"the last third of the run (default: {DEFAULTS.rss_growth_limit_mib:g})")
    parser.add_argument("--malloc-arenas", type=int, default=DEFAULTS.malloc_arenas,
                        help="MALLOC_ARENA_MAX of the local server; 0: glibc's default, as in "
                        f"production (default: {DEFAULTS.malloc_arenas})")
    parser.add_argument("--photos-per-class", type=int, default=DEFAULTS.photos_per_class,
                        help=f"face photos per class (default: {DEFAULTS.photos_per_class})")
    parser.add_argument("--model", type=Path, default=DEFAULTS.model,
                        help="bundle the local server serves (default: models/celebs8)")
    parser.add_argument("--data", type=Path, default=None,
                        help="face data root holding celebs8/ (default: $CELEBXAI_DATA or "
                        "../shared/data)")
    parser.add_argument("--out", type=Path, default=DEFAULTS.out_dir,
                        help="results folder (default: tests/artifacts/load)")
    return parser


def _duration(text: str) -> str:
    try:
        seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def main(args: argparse.Namespace) -> int:
    config = LoadConfig(
        users=args.users,
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        host=args.host,
        rss_growth_limit_mib=args.rss_growth_mib,
        malloc_arenas=args.malloc_arenas,
        photos_per_class=args.photos_per_class,
        model=args.model,
        data=args.data,
        out_dir=args.out,
    )
    result = run_load_test(config)
    print(result.summary())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
