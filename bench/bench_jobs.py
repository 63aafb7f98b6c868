"""One long explanation as a job, watched live, what cancelling one costs, and what jobs hold.

Starts the service as the README does (``python -m service`` on a free port, through
tests/load/harness.py's ``start_server``), then:

1. ``POST /jobs/lime?num_samples=--samples`` (1000) on a test-split face and reads
   ``GET /jobs/{id}/events`` as it comes: every event with its time since the POST, state,
   progress, estimated remaining time and whether it carried a partial map; then the final
   answer (label, the map's strongest cells), the overlay written to ``--out``, and whether the
   map equals the synchronous ``POST /explain/lime`` answer with the same seed;
2. another LIME job of ``--cancel-samples`` (2000) samples, deleted once it runs: the forward
   passes the service ran after the DELETE (``celebxai_explanation_batches_total``), the
   server's CPU seconds from the DELETE until the job says ``cancelled`` and in the second
   after, and how long the cancel took;
3. ``finished``: ``--finished-jobs`` (40) Grad-CAM jobs with ``format=overlay`` on a
   ``--side`` (2048) square upload of a face (upscaled, with a photo's grain), run to their
   end (8 at a time per key) and kept: what finished jobs hold is bounded by
   ``job_results_max`` and ``job_results_max_bytes`` (the oldest evicted first);
4. ``queued``: ``--queued-jobs`` (16) LIME jobs on ``--megapixels`` (40) megapixel PNGs (a face
   on a smooth background: ~100-200 KB, ~120 MB decoded), made at once over two API keys, so
   that all but two wait for a turn; then every one deleted and forgotten.

For 3 and 4, the service's resident memory (``/proc/<pid>/status``: VmRSS before, the phase's
peak VmHWM, VmRSS after the jobs are deleted) and what ``/metrics`` says jobs hold (finished
results and their bytes, evictions, decoded pixels in the budget). The service runs with two API
keys (``--api-key bench-a,bench-b``), otherwise as the README starts it.

    python bench/bench_jobs.py [--parts timeline,cancel,finished,queued] [--samples 1000]
        [--cancel-samples 2000] [--finished-jobs 40] [--side 2048] [--queued-jobs 16]
        [--megapixels 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from _common import ROOT, add_bundle_args, machine_load, split_items
from PIL import Image

sys.path.insert(0, str(ROOT))
from tests.load.harness import free_port, start_server, stop_server  # noqa: E402

BATCHES = "celebxai_explanation_batches_total"
KEYS = ("bench-a", "bench-b")
GRAIN = 8.0
PARTS = ("timeline", "cancel", "finished", "queued")
# every request carries the first key; a request for the second key's jobs names it
CLIENT = httpx.Client(headers={"X-API-Key": KEYS[0]}, timeout=600)
HELD_METRICS = (
    "celebxai_job_results",
    "celebxai_job_result_bytes",
    "celebxai_job_results_evicted_total",
    "celebxai_decode_pixels_in_use",
)


def main() -> None:
    parser = add_bundle_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--cancel-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finished-jobs", type=int, default=40)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--queued-jobs", type=int, default=16)
    parser.add_argument("--queued-samples", type=int, default=1000)
    parser.add_argument("--megapixels", type=float, default=40.0)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; valid: {', '.join(PARTS)}")
    relative, _ = split_items(args.model)[0]
    face = (args.data / "celebs8" / relative).read_bytes()
    port = free_port()
    print(f"before: {machine_load({os.getpid()})}")
    with tempfile.TemporaryDirectory() as logs:
        options = ["--api-key", ",".join(KEYS)]
        server = start_server(args.model, port, Path(logs) / "service.log", options)
        try:
            url = f"http://127.0.0.1:{port}"
            process = psutil.Process(server.pid)
            if "timeline" in parts:
                timeline(url, face, args)
            if "cancel" in parts:
                cancel(url, face, args, process)
            if "finished" in parts:
                finished_jobs(url, face, args, server.pid)
            if "queued" in parts:
                queued_jobs(url, face, args, server.pid)
        finally:
            stop_server(server)
            print(f"\nwhile the service was up: {machine_load({os.getpid(), server.pid})}")


def timeline(url: str, face: bytes, args: argparse.Namespace) -> None:
    params = f"num_samples={args.samples}&seed={args.seed}&detect=false"
    files = {"file": ("face.png", face, "image/png")}
    posted = time.perf_counter()
    # the job renders the overlay it is asked for, as the synchronous call would
    started = CLIENT.post(f"{url}/jobs/lime?{params}&format=overlay", files=files, timeout=60)
    started.raise_for_status()
    job = started.json()
    print(f"\nLIME job, {args.samples} samples: 202 in {since(posted)} s, id {job['id']}")
    print(f"{'t (s)':>7} {'state':>9} {'progress':>9} {'remaining (s)':>14} {'map':>4}")
    with CLIENT.stream("GET", f"{url}/jobs/{job['id']}/events", timeout=600) as events:
        for line in events.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line.removeprefix("data:"))
            remaining = event["remaining_s"]
            print(
                f"{since(posted):>7} {event['state']:>9} {event['progress']:>9.3f} "
                f"{'-' if remaining is None else f'{remaining:.2f}':>14} "
                f"{'yes' if 'heatmap' in event else 'no':>4}"
            )
    result = CLIENT.get(f"{url}/jobs/{job['id']}").json()["result"]
    values = np.asarray(result["heatmap"]["values"])
    rows, cols = np.unravel_index(np.argsort(values, axis=None)[-3:][::-1], values.shape)
    top = [(int(row), int(col)) for row, col in zip(rows, cols, strict=True)]
    print(
        f"final: {result['label']} p={result['probability']:.3f}, map {values.shape[1]}x"
        f"{values.shape[0]}, strongest cells (row, col) {top}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    overlay = CLIENT.get(f"{url}/jobs/{job['id']}/result?format=overlay").content
    (args.out / "job_lime_overlay.png").write_bytes(overlay)
    sync = CLIENT.post(f"{url}/explain/lime?{params}", files=files, timeout=600).json()
    same = sync["heatmap"]["values"] == result["heatmap"]["values"]
    print(f"overlay: {args.out / 'job_lime_overlay.png'}; equals the synchronous map: {same}")


def cancel(url: str, face: bytes, args: argparse.Namespace, server: psutil.Process) -> None:
    params = f"num_samples={args.cancel_samples}&seed={args.seed + 1}&detect=false"
    files = {"file": ("face.png", face, "image/png")}
    job_id = CLIENT.post(f"{url}/jobs/lime?{params}", files=files, timeout=60).json()["id"]
    while CLIENT.get(f"{url}/jobs/{job_id}").json()["progress"] < 0.05:
        time.sleep(0.05)
    before = batches(url)
    cpu = cpu_seconds(server)
    deleted = time.perf_counter()
    CLIENT.delete(f"{url}/jobs/{job_id}").raise_for_status()
    while (status := CLIENT.get(f"{url}/jobs/{job_id}").json())["state"] != "cancelled":
        time.sleep(0.01)
    stopped_s = time.perf_counter() - deleted
    cpu_to_stop = cpu_seconds(server) - cpu
    after = batches(url)
    time.sleep(1.0)
    cpu_after = cpu_seconds(server) - cpu - cpu_to_stop
    print(
        f"\ncancel: a {args.cancel_samples}-sample LIME job deleted at progress "
        f"{status['progress']:.3f}: cancelled {stopped_s:.3f} s later, "
        f"{after - before:g} forward passes after the DELETE (at most the one in flight), "
        f"{batches(url) - after:g} in the second after; server CPU {cpu_to_stop:.3f} s until "
        f"cancelled, {cpu_after:.3f} s in the second after"
    )


def batches(url: str) -> float:
    for line in CLIENT.get(f"{url}/metrics").text.splitlines():
        if line.startswith(BATCHES + " "):
            return float(line.split()[1])
    raise LookupError(f"{BATCHES} not in /metrics")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def since(start: float) -> str:
    return f"{time.perf_counter() - start:.2f}"


# --- what jobs hold -----------------------------------------------------------------------------


def finished_jobs(url: str, face: bytes, args: argparse.Namespace, pid: int) -> None:
    upload = square_upload(face, args.side)
    print(
        f"\nfinished: {args.finished_jobs} Grad-CAM jobs, format=overlay, on a {args.side}x"
        f"{args.side} upload ({len(upload) / 1e6:.2f} MB), run to their end and kept"
    )
    with Memory(pid) as memory:
        ids: list[tuple[str, str]] = []
        pending: list[tuple[str, str]] = []
        for index in range(args.finished_jobs):
            key = KEYS[index % 2]
            if len(pending) >= 2 * 8:  # the limit per key, over both keys
                wait_done(url, *pending.pop(0))
            job_id = submit(url, key, "gradcam?format=overlay&detect=false", upload, "image/jpeg")
            pending.append((job_id, key))
            ids.append((job_id, key))
        for job_id, key in pending:
            wait_done(url, job_id, key)
        memory.mark("all done")
        print(f"  held: {held(url)}")
        kept = sum(
            CLIENT.get(f"{url}/jobs/{j}", headers=auth(k)).status_code == 200 for j, k in ids
        )
        print(f"  {kept} of {len(ids)} jobs still answer (the others evicted, oldest first)")
        forget(url, ids)
    print(f"  after deleting them: held: {held(url)}")


def queued_jobs(url: str, face: bytes, args: argparse.Namespace, pid: int) -> None:
    upload = large_png(face, args.megapixels)
    print(
        f"\nqueued: {args.queued_jobs} LIME jobs ({args.queued_samples} samples) on a "
        f"{args.megapixels:g}-megapixel PNG ({len(upload) / 1e3:.0f} KB), made at once"
    )
    with Memory(pid) as memory:
        ids = []
        for index in range(args.queued_jobs):
            key = KEYS[index % 2]
            query = f"lime?num_samples={args.queued_samples}&seed={index}&detect=false"
            ids.append((submit(url, key, query, upload, "image/png"), key))
        states = [CLIENT.get(f"{url}/jobs/{j}", headers=auth(k)).json()["state"] for j, k in ids]
        memory.mark(
            f"all made ({states.count('queued')} queued, {states.count('running')} running)"
        )
        print(f"  held: {held(url)}")
        forget(url, ids)
    print(f"  after deleting them: held: {held(url)}")


class Memory:
    """The service's VmRSS before, its peak (VmHWM, reset at the start where the kernel lets
    us, and VmRSS sampled every 50 ms) and VmRSS at each ``mark`` and after."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Memory:
        try:  # "5" resets the peak resident set size (VmHWM) to the current one
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass
        self.before = self.status("VmRSS")
        print(f"  RSS before: {self.before / 1024:.0f} MB")
        self._sampler.start()
        return self

    def mark(self, what: str) -> None:
        print(f"  RSS {what}: {self.status('VmRSS') / 1024:.0f} MB")

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # the deletes' last frees
        self._stop.set()
        self._sampler.join()
        peak = max(self.peak, self.status("VmHWM"))
        after = self.status("VmRSS")
        print(
            f"  RSS before {self.before / 1024:.0f} MB, peak {peak / 1024:.0f} MB, after "
            f"{after / 1024:.0f} MB (after - before: {(after - self.before) / 1024:+.0f} MB)"
        )

    def status(self, field: str) -> int:
        """``field`` of /proc/<pid>/status, kB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise LookupError(field)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.status("VmRSS"))


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def submit(url: str, key: str, query: str, upload: bytes, media_type: str) -> str:
    files = {"file": ("upload", upload, media_type)}
    answer = CLIENT.post(f"{url}/jobs/{query}", files=files, headers=auth(key), timeout=600)
    answer.raise_for_status()
    return str(answer.json()["id"])


def wait_done(url: str, job_id: str, key: str) -> None:
    while (state := CLIENT.get(f"{url}/jobs/{job_id}", headers=auth(key)).json()["state"]) in {
        "queued",
        "running",
    }:
        time.sleep(0.1)
    if state != "done":
        raise RuntimeError(f"job {job_id} ended {state}")


def forget(url: str, ids: list[tuple[str, str]]) -> None:
    """DELETE every job (cancel), wait for each to end, DELETE again (forget)."""
    for job_id, key in ids:
        CLIENT.delete(f"{url}/jobs/{job_id}", headers=auth(key))
    for job_id, key in ids:
        while CLIENT.get(f"{url}/jobs/{job_id}", headers=auth(key)).json().get("state") in {
            "queued",
            "running",
        }:
            time.sleep(0.05)
        CLIENT.delete(f"{url}/jobs/{job_id}", headers=auth(key))


def held(url: str) -> str:
    values = dict.fromkeys(HELD_METRICS, 0.0)
    for line in CLIENT.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return ", ".join(
        f"{name.removeprefix('celebxai_')} {value:g}" for name, value in values.items()
    )


def square_upload(face: bytes, side: int, grain: float = GRAIN) -> bytes:
    """The face scaled to ``side`` x ``side`` with a camera's grain (Gaussian, ``grain`` levels
    of 255; fixed seed), as a JPEG: a photo of that size, whose overlay PNG compresses as a
    photo's does (an upscaled crop alone is smooth and would compress several times better)."""
    photo = Image.open(io.BytesIO(face)).convert("RGB")
    pixels = np.asarray(photo.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
    pixels += np.random.default_rng(0).normal(0.0, grain, pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92)
    return out.getvalue()


def large_png(face: bytes, megapixels: float) -> bytes:
    """A PNG of ``megapixels`` (4:3): the face in the middle of a smooth vertical gradient,
    which compresses to little (the decode costs the full 3 bytes a pixel)."""
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(megapixels * 1e6 / width)
    column = np.linspace(64, 192, height, dtype=np.float32).astype(np.uint8)
    canvas = Image.fromarray(np.repeat(column[:, None], width, axis=1)).convert("RGB")
    photo = Image.open(io.BytesIO(face)).convert("RGB")
    canvas.paste(photo, ((width - photo.width) // 2, (height - photo.height) // 2))
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=9)
    return out.getvalue()


if __name__ == "__main__":
    main()
