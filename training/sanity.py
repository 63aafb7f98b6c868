"""The cascading model-parameter randomisation test (Adebayo et al., NeurIPS 2018), per method.

An explanation that does not change when the model's learned parameters are destroyed explains
the image (edges, contrast), not the model. The test re-draws the twin's parameters stage by
stage from the top of the network down, cumulatively (stage k: stages 1..k all random), and
compares every method's map of each test face on the randomised network with its map on the
trained one, for the face's true label and at the method's default parameters:

- Spearman rank correlation of the flattened absolute maps (``scipy.stats.spearmanr``, through
  ``service.explain.heatmap.split_half_agreement``);
- SSIM of the absolute maps scaled to [0, 1] (``skimage.metrics.structural_similarity``).

Both are averaged over the faces per stage. A method passes when its mean Spearman similarity
is below ``PASS_BELOW`` at every stage: its maps change once what the model learned is gone.

Every map, trained or randomised, is computed on the torch twin: gradient methods through it,
perturbation methods through a forward function that runs it (``twin_forward``), so the only
difference between two maps is the parameters. The result is ``meta.json["sanity"]``
(``service.bundle.format.SanitySpec``), written by ``python -m training sanity``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from service.bundle.checks import load_twin
from service.bundle.format import META_FILE, SanitySpec, read_meta
from service.bundle.framing import framed
from service.bundle.preprocess import Preprocessor
from service.explain import EXPLAINERS, ModelHandle
from service.explain.heatmap import Heatmap, split_half_agreement
from training.bundle_meta import update_meta

TEST = "cascading_model_parameter_randomisation"
PASS_BELOW = 0.5
RULE = (
    f"a method passes when its mean Spearman rank correlation between the absolute maps of the "
    f"trained and the randomised network is below {PASS_BELOW} at every stage of the cascade"
)
SPLIT = "test"
SEED = 0
# Stored figures: four decimals are far below the spread between faces.
DECIMALS = 4

log = logging.getLogger(__name__)

Face = tuple[np.ndarray, int, Image.Image]


@dataclass(frozen=True)
class Stage:
    """One step of the cascade: its name (the modules' names, joined by ``+``) and the twin's
    parameter names it re-draws."""

    name: str
    parameters: tuple[str, ...]


def load_faces(bundle: Path, images: Path, count: int, preprocess: Preprocessor) -> list[Face]:
    """``count`` test-split faces of ``bundle/split.json`` spread evenly over the split, read
    from ``images`` (the class folders, e.g. ``../shared/data/celebs8``): (model input
    ``(3, H, W)`` float32, class index, photo resized to the model's input size). Each photo is
    cut to the bundle's framing box first, as the service does with a face crop sent whole
    (and as the model was trained): the maps are judged on the inputs the service explains."""
    items = json.loads((bundle / "split.json").read_text())["splits"][SPLIT]
    step = max(1, len(items) // max(count, 1))
    faces = []
    for relative, label in items[::step][:count]:
        photo = framed(Image.open(images / relative).convert("RGB"), preprocess.spec.framing)
        faces.append(
            (
                preprocess(photo),
                int(label),
                photo.resize(preprocess.size, Image.Resampling.BILINEAR),
            )
        )
    return faces


def cascade_stages(twin: torch.nn.Module, layers: Sequence[str]) -> list[Stage]:
    """The cascade, top of the network first. ``layers`` are the backbone stages meta.json
    lists (stem, layer1, ...). Each parameter belongs to the first module on its path that does
    not contain one of ``layers`` (so the wrappers around the backbone are looked through):
    one of the layers, or a module above them (the embedding ``fc``, the classifier ``head``).
    Everything above the last layer is the first stage (the classifier as a whole), then each
    layer from the top down. Raises ``ValueError`` when a layer is not a module of the twin."""
    modules = dict(twin.named_modules())
    wanted = set(layers)
    holders = {
        name
        for name in modules
        for layer in wanted
        if any(sub == layer or sub.endswith(f".{layer}") for sub in _below(name, modules))
    }
    units: dict[str, list[str]] = {}
    for parameter, _ in twin.named_parameters():
        path = parameter.split(".")[:-1]
        unit = next(
            (part for depth, part in enumerate(path) if ".".join(path[: depth + 1]) not in holders),
            path[-1] if path else parameter,
        )
        units.setdefault(unit, []).append(parameter)
    missing = [layer for layer in layers if layer not in units]
    if missing:
        raise ValueError(f"the twin has no module {', '.join(missing)} (meta.json layers)")
    above = [unit for unit in units if unit not in wanted]
    stages = []
    if above:
        stages.append(
            Stage(
                "+".join(reversed(above)),
                tuple(p for unit in above for p in units[unit]),
            )
        )
    ordered = [unit for unit in units if unit in wanted]  # definition order: the input first
    stages += [Stage(unit, tuple(units[unit])) for unit in reversed(ordered)]
    return stages


def _below(name: str, modules: dict[str, torch.nn.Module]) -> list[str]:
    """Names of the modules strictly inside ``name``, relative to it."""
    prefix = f"{name}." if name else ""
    return [other[len(prefix) :] for other in modules if other != name and other.startswith(prefix)]


def randomise(twin: torch.nn.Module, stage: Stage, seed: int) -> None:
    """Re-draw ``stage``'s parameters in place, from a generator seeded with ``seed``: weight
    tensors (2-D and more: convolutions, linear layers) from a normal with mean 0 and the
    trained tensor's standard deviation, the per-channel ones (biases, affine and batch-norm
    scales and shifts) from a normal with the trained tensor's mean and standard deviation, so
    that scales keep their size and sign on the whole and the signal neither vanishes nor
    explodes. Batch-norm running statistics are buffers and stay."""
    generator = torch.Generator().manual_seed(seed)
    parameters = dict(twin.named_parameters())
    with torch.no_grad():
        for name in stage.parameters:
            p = parameters[name]
            std = p.std(unbiased=False) if p.numel() > 1 else p.abs().reshape(())
            mean = p.mean() if p.ndim == 1 else torch.zeros(())
            p.copy_(mean + std * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def twin_forward(twin: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """The twin as a perturbation method's forward function: ``(N, 3, H, W)`` float32 ->
    ``(N, C)`` float32 logits, without gradients."""

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits, _ = twin(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return np.asarray(logits.numpy(), dtype=np.float32)

    return forward


def similarity(trained: Heatmap, randomised: Heatmap) -> tuple[float, float]:
    """(Spearman, SSIM) of the absolute maps. A negligible (all about zero) or constant map has
    no ranking to compare, and ``spearmanr`` would give NaN: it counts as similarity 0, since
    the method no longer shows what the trained model showed."""
    a, b = np.abs(trained.values).astype(np.float64), np.abs(randomised.values).astype(np.float64)
    if trained.negligible or randomised.negligible or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0, 0.0
    rho = split_half_agreement(a, b)  # Spearman of the flattened maps
    ssim = float(structural_similarity(a / a.max(), b / b.max(), data_range=1.0))
    return rho, ssim


def explain_all(
    handle: ModelHandle, methods: Sequence[str], faces: Sequence[Face]
) -> dict[str, list[Heatmap]]:
    """Every method's map of every face, for the face's true label, at default parameters."""
    return {
        name: [EXPLAINERS[name](handle).attribute(x, target=label) for x, label, _ in faces]
        for name in methods
    }


def run_sanity(
    bundle: Path,
    images: Path,
    faces: int = 12,
    methods: Sequence[str] | None = None,
) -> SanitySpec:
    """The cascade on ``bundle``'s twin for ``methods`` (default: every method of
    ``EXPLAINERS`` but the one-pass one, whose explainer must be fitted again at every stage:
    ``python -m training one-pass`` runs that cascade) on ``faces`` test faces read from
    ``images``. Raises ``ValueError`` for an unknown method or too few faces."""
    if methods is None:
        methods = [name for name, method in EXPLAINERS.items() if not method.needs_one_pass]
    methods = list(methods)
    unknown = [name for name in methods if name not in EXPLAINERS]
    if unknown:
        raise ValueError(f"unknown method {', '.join(unknown)}; valid: {', '.join(EXPLAINERS)}")
    if faces < 1:
        raise ValueError(f"--faces must be at least 1, not {faces}")
    meta = read_meta(bundle)
    chosen = load_faces(bundle, images, faces, Preprocessor(meta.input))
    twin = load_twin(bundle)
    stages = cascade_stages(twin, [layer.name for layer in meta.layers])
    log.info(
        "%d faces, %d methods, cascade %s",
        len(chosen),
        len(methods),
        " > ".join(s.name for s in stages),
    )

    def maps_now(state: str) -> dict[str, list[Heatmap]]:
        handle = ModelHandle(twin_forward(twin), twin, meta.gradcam_layer)
        out = {}
        for name in methods:
            log.info("%s: %s on %d faces", state, name, len(chosen))
            out.update(explain_all(handle, [name], chosen))
        return out

    trained = maps_now("trained")
    per_method: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
    for index, stage in enumerate(stages):
        randomise(twin, stage, SEED + index)
        randomised = maps_now(f"stage {index + 1}/{len(stages)} ({stage.name} random)")
        for name in methods:
            pairs = [similarity(t, r) for t, r in zip(trained[name], randomised[name], strict=True)]
            per_method[name].append(
                {
                    "stage": stage.name,
                    "spearman": round(float(np.mean([p[0] for p in pairs])), DECIMALS),
                    "ssim": round(float(np.mean([p[1] for p in pairs])), DECIMALS),
                }
            )
    return SanitySpec.model_validate(
        {
            "test": TEST,
            "rule": RULE,
            "pass_below": PASS_BELOW,
            "faces": len(chosen),
            "split": SPLIT,
            "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "methods": {
                name: {
                    "passed": all(s["spearman"] < PASS_BELOW for s in rows),
                    "stages": rows,
                }
                for name, rows in per_method.items()
            },
        }
    )


def write_sanity(bundle: Path, spec: SanitySpec) -> None:
    """Store ``spec`` as ``meta.json["sanity"]`` (``update_meta``: every other key and the key
    order kept, an earlier ``sanity`` replaced where it stood). meta.json lists no hash of
    itself, so nothing else changes."""
    update_meta(bundle, lambda raw: raw.update(sanity=spec.model_dump(mode="json")))


def table(spec: SanitySpec) -> str:
    """The result as a Markdown table: method, passed, Spearman per stage (the CLI's output)."""
    stages = next(iter(spec.methods.values())).stages if spec.methods else []
    head = ["method", "passed", *(s.stage for s in stages)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, method in spec.methods.items():
        cells = [
            name,
            "yes" if method.passed else "no",
            *(f"{s.spearman:.3f}" for s in method.stages),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sanity_command(args: Any) -> int:
    """``python -m training sanity``: run the cascade, print the table, store it (unless
    ``--dry-run``)."""
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    bundle = Path(args.bundle)
    spec = run_sanity(bundle, Path(args.data), args.faces, methods)
    print(
        f"Cascading model-parameter randomisation, {spec.faces} {spec.split} faces, "
        f"true labels; mean Spearman of |map| per stage (top first, cumulative); "
        f"passes below {spec.pass_below} at every stage\n"
    )
    print(table(spec))
    if args.dry_run:
        print(f"\n--dry-run: {bundle / META_FILE} not changed")
    else:
        write_sanity(bundle, spec)
        print(f"\nwrote meta.json['sanity'] of {bundle}")
    return 0
