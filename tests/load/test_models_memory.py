"""Several models side by side keep memory bounded: the service, started as the README does
with ``--models-dir`` (three bundles beside the default) and ``--max-loaded-models 2``, is asked
for each model in turn, round after round, so every request to another model loads it and
unloads the one before. Its RSS must stay below what holding every model would cost: after the
first round it may not grow by half a model's load, its peak stays below the RSS of all of
them loaded, and ``GET /models`` shows at most two loaded. The figures (RSS per model, per
round) are printed at the end of the run."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.bundle_copies import bundle_copy

from .harness import ARTIFACTS, MIB, RssSampler, free_port, start_server, stop_server

OTHERS = ("celebs8-a", "celebs8-b", "celebs8-c")
ROUNDS = 4
MAX_LOADED = 2


def _predict(port: int, model: str, photo: bytes) -> dict:
    boundary = "celebxai-load"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict?model={model}",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return bytes(response.read())


@pytest.mark.load
def test_alternating_models_beyond_the_limit_keeps_memory_bounded(
    tmp_path: Path, default_bundle: Path, celebs_root: Path, load_summaries: list[str]
) -> None:
    models_dir = tmp_path / "models"
    for name in OTHERS:
        bundle_copy(default_bundle, models_dir / name, name)
    photo = next((celebs_root / "tom_hanks").glob("*.png")).read_bytes()
    port = free_port()
    out = ARTIFACTS / "models"
    out.mkdir(parents=True, exist_ok=True)
    options = ["--models-dir", str(models_dir), "--max-loaded-models", str(MAX_LOADED)]
    server = start_server(default_bundle, port, out / "server.log", options)
    try:
        with RssSampler(server.pid, interval=0.25) as sampler:
            ready = sampler.process.memory_info().rss
            after_round = []
            for _ in range(ROUNDS):
                for name in OTHERS:
                    assert _predict(port, name, photo)["model"]["name"] == name
                after_round.append(sampler.process.memory_info().rss)
            listed = json.loads(_get(port, "/models"))["models"]
            metrics = _get(port, "/metrics").decode()
    finally:
        stop_server(server)

    loaded = [m["name"] for m in listed if m["loaded"]]
    per_model = [m["rss_bytes"] for m in listed if m["name"] in OTHERS and m["rss_bytes"]]
    model_rss = max(per_model)
    peak = max(sample.rss for sample in sampler.samples)
    figures = {
        "ready_mib": ready / MIB,
        "model_rss_mib": [r / MIB for r in per_model],
        "after_round_mib": [r / MIB for r in after_round],
        "peak_mib": peak / MIB,
        "loaded": loaded,
    }
    (out / "results.json").write_text(json.dumps(figures, indent=2))
    load_summaries.append(
        f"models: ready {ready / MIB:.0f} MiB, one model +{model_rss / MIB:.0f} MiB, after each "
        f"round {', '.join(f'{r / MIB:.0f}' for r in after_round)} MiB, peak {peak / MIB:.0f} "
        f"MiB ({len(OTHERS)} models in turn, max_loaded_models={MAX_LOADED}, {ROUNDS} rounds)"
    )

    assert len(loaded) <= MAX_LOADED, loaded
    evictions = ROUNDS * len(OTHERS) - 1  # every load after the first unloads one
    assert "celebxai_model_evictions_total" in metrics
    assert (
        sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("celebxai_model_evictions_total{")
        )
        == evictions
    )
    # Holding every model would add each one's RSS; bounded, the service holds the default and
    # one other after every round, as after the first, and never all of them even while loading.
    assert peak < ready + len(OTHERS) * model_rss, figures
    assert max(after_round[1:]) < after_round[0] + model_rss / 2, figures
