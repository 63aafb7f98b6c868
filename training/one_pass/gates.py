"""The gates an explainer must pass before it goes into a bundle.

- ``faithfulness``: on test faces (the predicted class, every method at its defaults), the
  quality module's offline protocol (``service.explain.faithfulness``, ``STEPS`` steps): the
  explainer's mean deletion AUC at most ``MARGIN`` above LIME's and occlusion's (lower is
  better), its mean insertion AUC at most ``MARGIN`` below theirs; the random map's areas and
  every method's deletion ratio to them are recorded too (the issue's "deletion AUC / random").
- ``randomisation``: the cascading model-parameter randomisation test (``training.sanity``:
  Adebayo et al. 2018) applied to the method as it is made: for an amortised explainer, making
  the map includes fitting it to the model, so at every stage of the cascade the explainer is
  fitted again (a reduced recipe) to the randomised model, on that model's own trunk, and its
  maps of the sanity faces are compared with those of the same reduced recipe fitted to the
  trained model. It passes where the mean Spearman similarity of the absolute maps stays below
  ``training.sanity.PASS_BELOW`` at every stage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from service.explain import EXPLAINERS, Explainer, ModelHandle
from service.explain.faithfulness import deletion_auc, insertion_auc
from service.explain.heatmap import Heatmap
from service.explain.one_pass import FastShap, OnePassModel
from training.one_pass.fit import FitConfig, fit_head
from training.one_pass.net import Head, grid_features
from training.one_pass.samples import make_samples
from training.sanity import (
    PASS_BELOW,
    cascade_stages,
    randomise,
    similarity,
    twin_forward,
)

log = logging.getLogger(__name__)

STEPS = 20
MARGIN = 0.02
COMPARED = ("lime", "occlusion")
RANDOM = "random"
RANDOM_SEED = 0
DECIMALS = 4

Forward = Callable[[np.ndarray], np.ndarray]


def faithfulness(
    forward: Forward, one_pass: OnePassModel, faces: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Mean deletion and insertion AUCs of ``fastshap``, ``COMPARED`` and a random map over
    ``faces`` (``(3, H, W)`` model inputs), and whether ``fastshap`` is within ``MARGIN`` of
    every compared method on both curves."""
    handle = ModelHandle(forward=forward, one_pass=one_pass)
    rng = np.random.default_rng(RANDOM_SEED)
    areas: dict[str, dict[str, list[float]]] = {
        name: {"deletion": [], "insertion": []} for name in (FastShap.name, *COMPARED, RANDOM)
    }
    for index, x in enumerate(faces):
        methods: dict[str, type[Explainer]] = {
            FastShap.name: FastShap,
            **{name: EXPLAINERS[name] for name in COMPARED},
        }
        maps = {name: method(handle).attribute(x) for name, method in methods.items()}
        target = maps[FastShap.name].target
        values = {name: heatmap.values for name, heatmap in maps.items()}
        values[RANDOM] = rng.random(x.shape[1:])
        for name, map_ in values.items():
            areas[name]["deletion"].append(deletion_auc(forward, x, map_, target, steps=STEPS))
            areas[name]["insertion"].append(insertion_auc(forward, x, map_, target, steps=STEPS))
        if (index + 1) % 8 == 0 or index + 1 == len(faces):
            log.info("faithfulness: %d/%d test faces", index + 1, len(faces))
    means = {
        name: {curve: float(np.mean(v)) for curve, v in curves.items()}
        for name, curves in areas.items()
    }
    own = means[FastShap.name]
    passed = all(
        own["deletion"] <= means[other]["deletion"] + MARGIN
        and own["insertion"] >= means[other]["insertion"] - MARGIN
        for other in COMPARED
    )
    random_deletion = means[RANDOM]["deletion"]
    return {
        "passed": passed,
        "rule": (
            f"mean deletion AUC at most {MARGIN} above, and mean insertion AUC at most {MARGIN} "
            f"below, each of {', '.join(COMPARED)} at their defaults ({STEPS} steps per curve, "
            "the predicted class)"
        ),
        "faces": len(faces),
        "steps": STEPS,
        "methods": {
            name: {
                "deletion_auc": round(m["deletion"], DECIMALS),
                "insertion_auc": round(m["insertion"], DECIMALS),
                "deletion_ratio_to_random": round(m["deletion"] / random_deletion, DECIMALS),
            }
            for name, m in means.items()
        },
    }


def twin_features(
    twin: Any, layer: str, context: Sequence[str] = ()
) -> Callable[[np.ndarray], np.ndarray]:
    """The explainer's trunk features (``net.grid_features``) from the twin's activations."""

    def features(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            _, activations = twin(torch.from_numpy(np.ascontiguousarray(batch)))
            return np.asarray(grid_features(activations, layer, context).numpy(), np.float32)

    return features


def randomisation(
    twin: Any,
    layers: Sequence[str],
    layer: str,
    context: Sequence[str],
    grid: int,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    faces: Sequence[tuple[np.ndarray, int]],
    masks: int,
    config: FitConfig,
) -> dict[str, Any]:
    """The cascade (see the module's docstring) on ``twin`` (re-drawn in place: pass a copy),
    the reduced recipe fitted on ``train`` and ``val`` faces (inputs, labels) with ``masks``
    coalitions each, maps of ``faces`` (input, true label) compared. The reduced recipe fits one
    head, not an ensemble: what is tested is whether the maps follow the model."""

    def maps_now(state: str) -> list[Heatmap]:
        forward, features = twin_forward(twin), twin_features(twin, layer, context)
        fitted = make_samples(
            forward, features, *train, grid=grid, masks=masks, seed=config.seed, name=state
        )
        held = make_samples(
            forward, features, *val, grid=grid, masks=masks, seed=config.seed + 1, name=state
        )
        baseline = forward(np.zeros((1, *train[0].shape[1:]), dtype=np.float32))[0]
        head, _ = fit_head(fitted, held, baseline, config)
        one_pass = OnePassModel(_head_on(twin, head, layer, context), baseline, grid, config.value)
        handle = ModelHandle(forward=forward, one_pass=one_pass)
        return [FastShap(handle).attribute(x, target=label) for x, label in faces]

    trained = maps_now("randomisation: trained model")
    stages: list[dict[str, Any]] = []
    for index, stage in enumerate(cascade_stages(twin, layers)):
        randomise(twin, stage, index)
        randomised = maps_now(f"randomisation: {stage.name} random")
        pairs = [similarity(t, r) for t, r in zip(trained, randomised, strict=True)]
        stages.append(
            {
                "stage": stage.name,
                "spearman": round(float(np.mean([p[0] for p in pairs])), DECIMALS),
                "ssim": round(float(np.mean([p[1] for p in pairs])), DECIMALS),
            }
        )
        log.info("randomisation: %s random, Spearman %.3f", stage.name, stages[-1]["spearman"])
    return {
        "passed": all(s["spearman"] < PASS_BELOW for s in stages),
        "rule": (
            f"cascading model-parameter randomisation, the explainer fitted again to the model "
            f"at every stage: mean Spearman of |map| below {PASS_BELOW} at every stage"
        ),
        "faces": len(faces),
        "fit_faces": len(train[0]),
        "masks_per_face": masks,
        "stages": stages,
    }


def _head_on(
    twin: Any, head: Head, layer: str, context: Sequence[str]
) -> Callable[[np.ndarray], np.ndarray]:
    features = twin_features(twin, layer, context)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(features(batch))).numpy()

    return run
