"""``python -m service.client explain PHOTO_OR_FOLDER --method lime --out DIR``: explain one
photo or every photo of a folder (and its subfolders) with a running service, writing each
overlay (the photo with the map blended in) and a summary.

Into ``--out``: ``<photo>.<method>.png`` per photo (a photo in a subfolder is named with its
folder: ``tom_hanks__9882.lime.png``), ``summary.csv`` (one row per photo: label, probability,
the class explained, the quality verdict, seconds, or the error that stopped it) and
``summary.json`` (the same rows, the method, its parameters and the retries). A photo the
service refuses (no face, not an image) is recorded with its error and the rest go on; the
exit status is 1 when any photo failed. Each photo is two requests, the JSON answer and the
overlay, the second from the service's explanation cache. Retries follow ``Retry-After``. The
API key comes from ``--api-key`` or ``CELEBXAI_API_KEY``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from service.client.api import Client, ServiceError

API_KEY_ENV = "CELEBXAI_API_KEY"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SUMMARY_FIELDS = (
    "file",
    "overlay",
    "label",
    "name",
    "probability",
    "target",
    "quality",
    "cached",
    "seconds",
    "error",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.client",
        description="A client of a running celebxai service.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser(
        "explain",
        help="explain a photo or a folder of photos; write overlays and a summary",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    explain.add_argument("photos", type=Path, metavar="PHOTO_OR_FOLDER")
    explain.add_argument("--method", required=True, help="a method GET /explain lists (lime, ...)")
    explain.add_argument("--out", type=Path, required=True, metavar="DIR", help="written to")
    explain.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the service (default: %(default)s)"
    )
    explain.add_argument(
        "--api-key", default=None, help=f"the service's API key (default: ${API_KEY_ENV})"
    )
    explain.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a query parameter of the method or the common ones (target, contrast, quality, "
        "detect, face); repeatable; default: none (the service's defaults)",
    )
    explain.add_argument(
        "--retries", type=int, default=5, help="retries of one request (default: %(default)s)"
    )
    explain.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per request (default: %(default)s)"
    )
    return parser


def photos_in(path: Path) -> list[Path]:
    """``path`` itself, or every photo under it (by suffix), sorted; none is an error."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SystemExit(f"{path}: no such file or folder")
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    if not found:
        raise SystemExit(f"{path}: no photo ({', '.join(PHOTO_SUFFIXES)}) in it")
    return found


def overlay_name(photo: Path, root: Path, method: str) -> str:
    """``<photo's path under root, folders joined by __>.<method>.png``."""
    relative = photo.relative_to(root) if root.is_dir() else Path(photo.name)
    return "__".join(relative.with_suffix("").parts) + f".{method}.png"


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param {pair!r}: expected NAME=VALUE")
        params[name] = value
    return params


def explain_all(
    client: Client, photos: list[Path], root: Path, method: str, params: dict[str, str], out: Path
) -> list[dict[str, Any]]:
    """Explain each photo (a progress bar on stderr), write its overlay; the summary rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for photo in tqdm(photos, desc=method, unit="photo", file=sys.stderr):
        started = time.perf_counter()
        row: dict[str, Any] = {"file": str(photo)}
        data = photo.read_bytes()
        try:
            answer = client.explain(data, method, params, "json", photo.name)
            overlay = client.explain(data, method, params, "overlay", photo.name)
        except ServiceError as error:
            row["error"] = f"{error.code}: {error.message}"
        else:
            name = overlay_name(photo, root, method)
            (out / name).write_bytes(overlay)
            quality = answer.get("quality") or {}
            row.update(
                overlay=name,
                label=answer["label"],
                name=answer["name"],
                probability=round(float(answer["probability"]), 6),
                target=answer["target"]["id"],
                quality=quality.get("verdict", ""),
                cached=answer["cached"],
            )
        row["seconds"] = round(time.perf_counter() - started, 3)
        rows.append(row)
    return rows


def write_summary(out: Path, rows: list[dict[str, Any]], about: dict[str, Any]) -> None:
    with (out / "summary.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows({field: row.get(field, "") for field in SUMMARY_FIELDS} for row in rows)
    document = {**about, "photos": rows}
    (out / "summary.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None, http: httpx.Client | None = None) -> int:
    """Run the command line; ``http``: the ``httpx.Client`` to send with (a test's)."""
    args = build_parser().parse_args(argv)
    params = parse_params(args.param)
    photos = photos_in(args.photos)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    with Client(args.url, api_key, args.retries, args.timeout, http=http) as client:
        try:
            rows = explain_all(client, photos, args.photos, args.method, params, args.out)
        except httpx.TransportError as error:
            print(f"cannot reach the service at {args.url}: {error}", file=sys.stderr)
            return 2
        failed = sum(1 for row in rows if row.get("error"))
        about = {
            "url": args.url,
            "method": args.method,
            "parameters": params,
            "explained": len(rows) - failed,
            "failed": failed,
            "retried": client.retried,
        }
    write_summary(args.out, rows, about)
    print(
        f"{len(rows) - failed} of {len(rows)} photos explained by {args.method} into {args.out}"
        + (f"; {failed} failed (summary.csv says why)" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
