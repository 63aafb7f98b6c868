"""``python -m training zoo``: a small zoo of models made by ``fit`` on the same data, split and
augmentation, each exported as a full bundle ``<out-root>/<name>/``, and the table of them.

Members (``--members``; every one is a ``fit`` command line, so the zoo trains nothing that
``fit`` cannot):

* ``linear`` -> ``celebs8-linear``: the frozen-feature baseline, a logistic regression on the
  pretrained dlib ResNet's embedding (``fit --stages none``: no fine-tuning, the baseline
  exported), with the same gallery-based open-set score as ``celebs8``;
* ``scratch`` -> ``celebs8-scratch``: the small CNN of ``training/backbones/scratch_cnn.py``
  trained from random weights (one stage ``all``, no per-layer learning-rate decay), on the
  same framed faces and ``faces`` augmentation, at 64 px;
* ``fine-tuned`` -> ``celebs8-fine-tuned``: ``fit``'s default recipe, the one that made the
  committed ``models/celebs8`` (about 15 minutes on 2 cores; not a default member, since that
  bundle is committed);
* ``imagenet`` -> ``celebs8-<arch>``: a torchvision ImageNet network (``--imagenet-arch``)
  fine-tuned with staged unfreezing, from ``--imagenet-weights PATH`` (a local state dict). No
  machine here has one: listing ``imagenet`` without the file fails before anything trains.

After the members, ``compare`` (``training/compare.py``) measures them beside
``--reference`` (``models/celebs8``) unless ``--no-compare``.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.bundle.format import read_meta

log = logging.getLogger(__name__)

PREFIX = "celebs8"
DEFAULT_MEMBERS = ("linear", "scratch")
MEMBERS = ("linear", "scratch", "fine-tuned", "imagenet")


@dataclass(frozen=True)
class Member:
    """One zoo model: its bundle name, what it is in words, and its ``fit`` flags."""

    key: str
    bundle: str
    what: str
    fit_flags: tuple[str, ...]


def members(args: argparse.Namespace) -> list[Member]:
    """The members ``args.members`` names, in that order; unknown names and ``imagenet``
    without its weights file fail here, before anything trains."""
    chosen = [m.strip() for m in args.members.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MEMBERS]
    if unknown or not chosen:
        raise ValueError(f"--members {args.members!r}: choose from {', '.join(MEMBERS)}")
    out = []
    for key in chosen:
        if key == "linear":
            out.append(
                Member(
                    key,
                    f"{PREFIX}-linear",
                    "frozen dlib-resnet29 embedding + logistic regression",
                    ("--backbone", "dlib-resnet29", "--stages", "none", "--export", "baseline"),
                )
            )
        elif key == "scratch":
            out.append(
                Member(
                    key,
                    f"{PREFIX}-scratch",
                    "small CNN trained from scratch (64 px)",
                    (
                        "--backbone",
                        "scratch-cnn",
                        "--weights",
                        "none",
                        "--framing",
                        "dlib-chip",
                        "--stages",
                        "all",
                        "--epochs",
                        str(args.scratch_epochs),
                        "--lr",
                        str(args.scratch_lr),
                        "--lr-decay",
                        "1",
                        "--patience",
                        str(args.scratch_patience),
                        "--no-baseline",
                        "--export",
                        "fine-tuned",
                    ),
                )
            )
        elif key == "fine-tuned":
            out.append(
                Member(
                    key,
                    f"{PREFIX}-fine-tuned",
                    "dlib-resnet29 fine-tuned, staged unfreezing (fit's default recipe)",
                    ("--export", "fine-tuned"),
                )
            )
        else:
            out.append(_imagenet(args))
    return out


def _imagenet(args: argparse.Namespace) -> Member:
    if not args.imagenet_weights:
        raise ValueError(
            f"member imagenet needs --imagenet-weights PATH, a local torchvision ImageNet state "
            f"dict of {args.imagenet_arch} (e.g. resnet18-f37072fd.pth); none is given, and "
            "this machine cannot download one"
        )
    if not Path(args.imagenet_weights).is_file():
        raise FileNotFoundError(f"--imagenet-weights {args.imagenet_weights} is not a file")
    return Member(
        "imagenet",
        f"{PREFIX}-{args.imagenet_arch}",
        f"torchvision {args.imagenet_arch}, ImageNet weights, fine-tuned (staged unfreezing)",
        (
            "--backbone",
            args.imagenet_arch,
            "--weights",
            args.imagenet_weights,
            "--framing",
            "dlib-chip",
            "--no-baseline",
            "--export",
            "fine-tuned",
        ),
    )


def fit_argv(member: Member, args: argparse.Namespace) -> list[str]:
    """The ``python -m training`` command line that trains ``member``."""
    argv = [
        "fit",
        *member.fit_flags,
        "--data",
        str(args.data),
        "--others",
        str(args.others),
        "--out",
        str(Path(args.out_root) / member.bundle),
        "--run-dir",
        str(Path(args.run_root) / member.bundle),
        "--seed",
        str(args.seed),
    ]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.limit_per_class:
        argv += ["--limit-per-class", str(args.limit_per_class)]
    if not args.insight:
        argv.append("--no-insight")
    return argv


def bundle_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def table(rows: list[dict[str, Any]]) -> str:
    """The zoo's markdown table: one row per bundle (``row`` dicts of ``summary``)."""
    lines = [
        "| bundle | model | parameters | train | val | test | open-set AUROC (held out) | "
        "FRR / FAR at threshold | training wall time | bundle size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        held = r["held_out"]
        open_set = (
            (
                f"{held['auroc']:.3f}",
                f"{100 * held['false_rejection_rate']:.1f} % / "
                f"{100 * held['false_acceptance_rate']:.1f} %",
            )
            if held
            else ("-", "-")
        )
        lines.append(
            f"| {r['bundle']} | {r['what']} | {r['parameters'] / 1e6:.2f} M | "
            + " | ".join(f"{r['accuracy'][s]:.4f}" for s in ("train", "val", "test"))
            + f" | {open_set[0]} | {open_set[1]} | {r['wall_time_s']:.0f} s | "
            f"{r['bytes'] / 1e6:.1f} MB |"
        )
    return "\n".join(lines)


def summary(bundle: Path, what: str, wall_time_s: float | None = None) -> dict[str, Any]:
    """A table row from ``bundle``'s meta.json (``wall_time_s``: the zoo's own measure of
    the member's whole ``fit``, else the one recorded in the bundle)."""
    meta = read_meta(bundle)
    held = meta.open_set.model_dump().get("held_out") if meta.open_set else None
    return {
        "bundle": meta.name,
        "what": what,
        "parameters": int(meta.architecture.get("parameters", 0)),
        "accuracy": {s: float(meta.metrics[s]["accuracy"]) for s in ("train", "val", "test")},
        "held_out": held,
        "wall_time_s": wall_time_s
        if wall_time_s is not None
        else float(meta.training.get("wall_time_s", 0)),
        "bytes": bundle_bytes(bundle),
    }


def zoo_command(args: argparse.Namespace) -> int:
    from training import run
    from training.__main__ import get_args_parser

    chosen = members(args)  # fails before training on a bad choice
    run._others(args)  # and on a missing strangers' folder
    started = time.perf_counter()
    rows = []
    reference = Path(args.reference) if args.reference != "none" else None
    if reference is not None:
        rows.append(summary(reference, "dlib-resnet29 fine-tuned, staged unfreezing (committed)"))
    for member in chosen:
        argv = fit_argv(member, args)
        log.info("zoo: %s: python -m training %s", member.bundle, " ".join(argv))
        t0 = time.perf_counter()
        code = run.fit_command(get_args_parser().parse_args(argv))
        if code != 0:
            raise RuntimeError(f"zoo: fit of {member.bundle} exited with {code}")
        rows.append(
            summary(Path(args.out_root) / member.bundle, member.what, time.perf_counter() - t0)
        )
    text = table(rows)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(text + "\n")
    print(text)
    print(f"\nzoo: {time.perf_counter() - started:.0f} s for {len(chosen)} member(s)")
    if not args.no_compare:
        from training.compare import compare_command

        bundles = ([str(reference)] if reference is not None else []) + [
            str(Path(args.out_root) / m.bundle) for m in chosen
        ]
        compare_args = argparse.Namespace(
            bundles=bundles,
            data=str(Path(args.data).parent),
            faces=args.compare_faces,
            requests=args.compare_requests,
            threads=args.threads or 2,
            out=args.compare_out,
            plot=args.compare_plot,
            methods=None,
            steps=20,
            json=None,
        )
        return compare_command(compare_args)
    return 0
