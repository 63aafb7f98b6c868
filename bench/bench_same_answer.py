"""The same photo, the same answer, under load; and what one face search per photo saves.

Starts the service as the README does (``python -m service``, or ``python -m service --ray``
with ``--ray``; ``--no-face-cache`` adds ``--face-search-cache 0``) on a free port, and:

1. picks its photos by asking the face finder which path each crop of the data folder takes
   (a seeded sample of celebs8 + others): ``--tight`` crops that need the padded retry or the
   CNN's second look, as many ordinary ones, and non-face images that go through every second
   look and answer ``no_face``;
2. takes each photo's baseline answer (the label, or 422 ``no_face``), twice, one request at a
   time;
3. times a tight crop's first ``/predict`` and its repeat (a crop kept out of the load);
4. sends the page's requests for one photo -- ``/predict``, then every panel at once, as
   service/static/app.js does (``POST /explain/{method}?format=png``, or for the anytime
   methods ``POST /jobs/{method}``, its event stream to the end, ``GET /jobs/{id}/result``) --
   once on an ordinary photo (every method's first run, left out), then for ``--pages`` pairs
   of a fresh tight crop and a fresh ordinary photo in turn: each panel's time on the tight
   crop over its time on the ordinary photo, and the median over the pairs (one page is seven
   requests sharing two cores: which gets a turn first moves a single ratio);
5. runs ``--clients`` clients for ``--duration`` seconds, each sending the photos in its own
   random order, and prints how many answers differ from the baseline, with p50/p95 latency per
   kind of photo.

    python bench/bench_same_answer.py [--clients 32] [--duration 180] [--ray] [--no-face-cache]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from _common import add_bundle_args
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.bundle.format import read_meta  # noqa: E402
from service.faces.finder import (  # noqa: E402
    RETRY_PADDING,
    FaceFinder,
    first_pass_scale,
    retry_scale,
    view_area,
)
from tests.load.harness import free_port, start_server, stop_server  # noqa: E402
from tests.nonface_images import crop_sized, skimage_photo  # noqa: E402

# Non-face images whose search goes through the retry and every second look.
NON_FACES = ("coffee", "rocket", "chelsea")
REQUEST_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Photo:
    name: str
    kind: str  # ordinary, retry, second look, non-face
    png: bytes


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def search_kind(finder: FaceFinder, image: Image.Image) -> str:
    """Which path the face search takes for ``image``, from the pixels it searched: the first
    pass alone (``ordinary``), the retry too (``retry``), or second looks beyond (``second
    look``)."""
    _, searched = finder.search(image)
    first = view_area(image.size, first_pass_scale(*image.size))
    retried = first + view_area(image.size, retry_scale(*image.size), RETRY_PADDING)
    if searched == first:
        return "ordinary"
    return "retry" if searched == retried else "second look"


def pick_photos(
    model: Path, data: Path, tight: int, pages: int, seed: int
) -> tuple[list[Photo], list[Photo], list[Photo]]:
    """``tight`` crops that need the retry or the second look (half each, where the sample has
    them), as many ordinary crops, and the non-face images, for the load; kept out of it,
    ``pages`` second-look crops and ``pages`` + 1 ordinary crops (the first warms the page up)
    for the first-versus-repeat and panel timings."""
    meta = read_meta(model)
    if meta.face_alignment is None:
        raise SystemExit(f"{model} has no face_alignment: no face search to load")
    finder = FaceFinder(meta.face_alignment, workers=1)
    crops = sorted(data.glob("celebs8/*/*.png")) + sorted(data.glob("others/*/*.png"))
    wanted = {
        "retry": tight // 2,
        "second look": tight - tight // 2 + pages,
        "ordinary": tight + pages + 1,
    }
    found: dict[str, list[Photo]] = defaultdict(list)
    for index in np.random.default_rng(seed).permutation(len(crops)):
        path = crops[index]
        kind = search_kind(finder, Image.open(path).convert("RGB"))
        if len(found[kind]) < wanted[kind]:
            found[kind].append(Photo(str(path.relative_to(data)), kind, path.read_bytes()))
        if all(len(found[k]) >= n for k, n in wanted.items()):
            break
    tight_spares = [found["second look"].pop() for _ in range(pages)]
    ordinary_spares = [found["ordinary"].pop() for _ in range(pages + 1)]
    non_faces = [
        Photo(f"{name}@112", "non-face", _png(crop_sized(skimage_photo(name))))
        for name in NON_FACES
    ]
    photos = [photo for kind in ("retry", "second look", "ordinary") for photo in found[kind]]
    return photos + non_faces, tight_spares, ordinary_spares


def answer_of(response: httpx.Response) -> str:
    """The answer that must not change: the label, or the error code."""
    if response.status_code == 200:
        return response.json()["label"]
    try:
        return f"{response.status_code} {response.json()['error']['code']}"
    except (ValueError, KeyError):
        return str(response.status_code)


def predict(client: httpx.Client, photo: Photo) -> tuple[str, float]:
    started = time.perf_counter()
    response = client.post("/predict", files={"file": ("photo.png", photo.png, "image/png")})
    return answer_of(response), time.perf_counter() - started


def baseline(client: httpx.Client, photos: list[Photo]) -> dict[str, str]:
    """Each photo's answer, asked twice one at a time; a photo answered two ways is said."""
    answers = {}
    for photo in photos:
        first, _ = predict(client, photo)
        second, _ = predict(client, photo)
        if first != second:
            print(f"  baseline unstable for {photo.name}: {first} then {second}")
        answers[photo.name] = first
    return answers


def first_and_repeat(client: httpx.Client, photo: Photo) -> None:
    answer, first = predict(client, photo)
    _, repeat = predict(client, photo)
    print(
        f"tight crop {photo.name} ({photo.kind}, {answer}): first /predict {first * 1000:.0f} ms, "
        f"repeat {repeat * 1000:.0f} ms"
    )


def panel(url: str, method: dict, photo: Photo) -> float:
    """Seconds for one panel of the page on ``photo``: the method's PNG, as a job for the
    anytime methods (created, its events to the end, its result), else at once."""
    files = {"file": ("photo.png", photo.png, "image/png")}
    params = {"format": "png"}
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        if not method.get("anytime"):
            response = client.post(f"/explain/{method['name']}", params=params, files=files)
        else:
            created = client.post(f"/jobs/{method['name']}", params=params, files=files)
            if created.status_code != 202:
                raise SystemExit(f"POST /jobs/{method['name']}: {created.status_code}")
            job = created.json()["id"]
            with client.stream("GET", f"/jobs/{job}/events") as events:
                for _ in events.iter_lines():
                    pass
            response = client.get(f"/jobs/{job}/result", params=params)
    if response.status_code != 200:
        raise SystemExit(f"panel {method['name']} on {photo.name}: {answer_of(response)}")
    return time.perf_counter() - started


def page(url: str, methods: list[dict], photo: Photo) -> dict[str, float]:
    """The page on ``photo``: /predict, then every panel at once; each panel's seconds."""
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        predict(client, photo)
    with ThreadPoolExecutor(len(methods)) as pool:
        futures = {m["name"]: pool.submit(panel, url, m, photo) for m in methods}
        return {name: future.result() for name, future in futures.items()}


def panels(url: str, tight_spares: list[Photo], ordinary_spares: list[Photo]) -> None:
    """The page on an ordinary photo first (every method's first run, out of the figures), then
    on a fresh tight crop and a fresh ordinary photo in turn, once per pair: each panel's time
    on the tight crop over its time on the ordinary photo, per pair and their median."""
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        methods = client.get("/explain").json()["methods"]
    page(url, methods, ordinary_spares[0])
    ratios: dict[str, list[float]] = defaultdict(list)
    print("the page's panels, each pair a fresh tight crop (second look) and an ordinary photo:")
    for tight_photo, ordinary_photo in zip(tight_spares, ordinary_spares[1:], strict=True):
        tight, ordinary = page(url, methods, tight_photo), page(url, methods, ordinary_photo)
        print(f"  {tight_photo.name} over {ordinary_photo.name}:")
        for name in tight:
            ratios[name].append(tight[name] / ordinary[name])
            print(
                f"    {name:22s} {tight[name]:7.2f} s / {ordinary[name]:7.2f} s = "
                f"{ratios[name][-1]:5.2f}"
            )
    print(
        "  median ratio per panel: "
        + ", ".join(f"{name} {float(np.median(values)):.2f}" for name, values in ratios.items())
    )


def load(
    url: str, photos: list[Photo], clients: int, duration_s: float, seed: int
) -> list[tuple[Photo, str, float]]:
    """``clients`` threads, each sending the photos in its own random order until
    ``duration_s`` has passed; every (photo, answer, seconds)."""
    results: list[tuple[Photo, str, float]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s

    def client_loop(index: int) -> None:
        rng = np.random.default_rng(seed + index)
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
            while time.monotonic() < deadline:
                for i in rng.permutation(len(photos)):
                    if time.monotonic() >= deadline:
                        return
                    answer, seconds = predict(client, photos[i])
                    with lock:
                        results.append((photos[i], answer, seconds))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def report(results: list[tuple[Photo, str, float]], expected: dict[str, str]) -> None:
    changed = [
        (photo.name, answer) for photo, answer, _ in results if answer != expected[photo.name]
    ]
    print(f"answers changed: {len(changed)} of {len(results)}")
    for (name, answer), count in Counter(changed).most_common(10):
        print(f"  {name}: {expected[name]} -> {answer} ({count}x)")
    by_kind: dict[str, list[float]] = defaultdict(list)
    for photo, _, seconds in results:
        by_kind[photo.kind].append(seconds * 1000)
    for kind, latencies in sorted(by_kind.items()):
        p50, p95 = np.percentile(latencies, [50, 95])
        print(f"  {kind:12s} n={len(latencies):5d}  p50 {p50:8.1f} ms  p95 {p95:8.1f} ms")


def face_search_lookups(client: httpx.Client) -> dict[str, float]:
    """The face search cache's lookups by result, from /metrics (empty: no such counter)."""
    counts = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "celebxai_face_search_cache_lookups_total":
                counts[sample.labels["result"]] = sample.value
    return counts


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_bundle_args(parser)
    parser.add_argument("--clients", type=int, default=32, help="clients at once (default: 32)")
    parser.add_argument(
        "--duration", type=float, default=180.0, help="seconds of load (default: 180)"
    )
    parser.add_argument(
        "--tight",
        type=int,
        default=12,
        help="tight crops in the load, and as many ordinary ones (default: 12)",
    )
    parser.add_argument(
        "--pages",
        type=int,
        default=3,
        help="pairs of pages (a tight crop's, an ordinary photo's) timed, after one warm-up page "
        "(default: 3)",
    )
    parser.add_argument("--seed", type=int, default=24, help="sample and order seed (default: 24)")
    parser.add_argument(
        "--ray", action="store_true", help="serve with python -m service --ray (default: off)"
    )
    parser.add_argument(
        "--no-face-cache",
        action="store_true",
        help="start the service with --face-search-cache 0 (default: the cache on)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for /readyz (default: 300)",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    photos, tight_spares, ordinary_spares = pick_photos(
        args.model, args.data, args.tight, args.pages, args.seed
    )
    print(
        f"photos: {dict(Counter(photo.kind for photo in photos))}; "
        f"kept for the page: {[p.name for p in tight_spares + ordinary_spares]}"
    )
    options = ["--ray"] if args.ray else []
    if args.no_face_cache:
        options += ["--face-search-cache", "0"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as logs:
        log_file = Path(logs) / "server.log"
        print(f"python -m service {' '.join(options)} on port {port} ...", flush=True)
        server = start_server(args.model, port, log_file, options, args.ready_timeout)
        try:
            with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
                expected = baseline(client, photos)
                print(f"baseline: {json.dumps(Counter(expected.values()))}")
                first_and_repeat(client, tight_spares[0])
                panels(url, tight_spares, ordinary_spares)
                before = face_search_lookups(client)
                print(f"{args.clients} clients for {args.duration:g} s ...", flush=True)
                results = load(url, photos, args.clients, args.duration, args.seed)
                after = face_search_lookups(client)
            report(results, expected)
            lookups = {k: after[k] - before.get(k, 0) for k in after}
            print(f"face search cache lookups during the load: {lookups or 'n/a'}")
        finally:
            stop_server(server)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
