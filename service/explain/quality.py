"""How much to believe a map: a quality report on one face, with a verdict.

The report puts a heatmap through the deletion and insertion test of ``faithfulness``
(Petsiuk et al. 2018) on the model input as served, ``STEPS`` steps each, and compares its
areas with those of a random map of the same face (``RANDOM_SEED``): a map that tracks the
model makes the target's probability fall faster on deletion, and rise faster on insertion,
than a random one. To these it adds the method's own signals, where the method has them
(``Heatmap.signals``): integrated gradients' completeness gap, LIME's weighted surrogate R²,
the agreement of the two halves of a sampling method's samples. ``verdict`` turns them into
``strong``, ``weak`` or ``unreliable`` by the rule in ``RULE`` (docs/explanations.md).

Cost: the map's two curves need ``2 * (STEPS - 1)`` images (their ends are the photo, whose
score is known, and the two baselines, which do not depend on the map) -- one forward pass of
``BATCH`` -- and the random map's curves as many again plus the two baselines, once per face and
target (``RandomCurves``, kept by the caller). No clock decides anything: the same face, map
and target always get the same report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service.common.cancellation import Cancellation
from service.explain.base import Forward
from service.explain.faithfulness import (
    DELETION_BASELINE,
    INSERTION_BASELINE,
    area_under,
    pixel_order,
)
from service.explain.heatmap import Heatmap
from service.explain.objective import Objective, Rows
from service.explain.perturb import baseline_image, batch_buffer, blend

STEPS = 16
BATCH = 32
# passes: the map's two curves' inner images (and a completeness baseline) in batches of their
# own, then, once per face and target, the random map's and the two baselines
REPEAT_PASSES = -(-(2 * (STEPS - 1) + 1) // BATCH)
PASSES = REPEAT_PASSES + -(-(2 * (STEPS - 1) + 2) // BATCH)
RANDOM_SEED = 0
Verdict = Literal["strong", "weak", "unreliable"]
VERDICTS: tuple[Verdict, ...] = ("strong", "weak", "unreliable")

# The rule's thresholds (RULE says them in words; docs/explanations.md shows how they were set).
MIN_GAIN = 0.15
STRONG_GAIN = 0.4
MIN_SPAN = 0.1
STRONG_AGREEMENT = 0.5
MIN_AGREEMENT = 0.2
MAX_COMPLETENESS_GAP = 0.25
MIN_SURROGATE_R2 = 0.2

RULE = (
    f"the curves follow the score the map explains, as a probability: the target's probability "
    f"(for a contrast, the target's probability between the two classes; for target=open_set, "
    f"the open-set score). "
    f"gain: how much better than a random map of the same face the map does, the mean of "
    f"(1 - deletion ratio) and (insertion ratio - 1), each ratio this map's area over the random "
    f"map's ({STEPS} steps per curve); where the blurred face's probability is less than "
    f"{MIN_SPAN} below the photo's, insertion cannot measure and the gain is 1 - deletion ratio. "
    f"unreliable: the map is negligible; or deleting the whole face moves the target's "
    f"probability by less than {MIN_SPAN} (nothing to measure); or the gain is below {MIN_GAIN}; "
    f"or the two halves of its samples agree less than {MIN_AGREEMENT} (Spearman). "
    f"strong: a gain of at least {STRONG_GAIN}, both curves better than the random map's "
    f"(insertion measured), and the method's own signals hold: halves agree at least "
    f"{STRONG_AGREEMENT}, completeness gap at most {MAX_COMPLETENESS_GAP}, surrogate R² at "
    f"least {MIN_SURROGATE_R2}. weak: anything else."
)


@dataclass(frozen=True)
class Completeness:
    """A method's completeness claim on one map: its raw values sum to ``total``, which should
    equal the target logit's change from ``baseline`` (an image) to the photo."""

    baseline: np.ndarray
    total: float


@dataclass(frozen=True)
class RandomCurves:
    """What the report compares a map with on one face and target: the random map's deletion
    and insertion curves, and the target's probability on the two baseline images (the
    deletion curve's end, the insertion curve's start), which every map's curves share."""

    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deleted(self) -> float:
        return float(self.deletion[-1])

    @property
    def blurred(self) -> float:
        return float(self.insertion[0])


@dataclass(frozen=True)
class QualityReport:
    """One map's grade on one face (see the module's docstring)."""

    verdict: Verdict
    reasons: tuple[str, ...]
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    deletion_ratio: float | None
    insertion_ratio: float | None
    gain: float | None
    """how much better than the random map (``gain_of``)"""
    probability: float
    """the target's probability on the photo (both curves' photo end)"""
    deleted_probability: float
    """the target's probability once every pixel is deleted"""
    blurred_probability: float
    """the target's probability on the blurred face (the insertion curve's start)"""
    signals: Mapping[str, float] = field(default_factory=dict)
    steps: int = STEPS


def random_map(shape: tuple[int, int]) -> np.ndarray:
    """The fixed random map every face's maps are compared with: uniform per pixel."""
    return np.random.default_rng(RANDOM_SEED).random(shape)


def grade(
    forward: Forward,
    x: np.ndarray,
    values: np.ndarray,
    target: int | Objective,
    logits: np.ndarray,
    *,
    rows: Rows | None = None,
    signals: Mapping[str, float] | None = None,
    negligible: bool = False,
    completeness: Completeness | None = None,
    random: RandomCurves | None = None,
    cancellation: Cancellation | None = None,
) -> tuple[QualityReport, RandomCurves]:
    """The report of map ``values`` ``(H, W)`` of model input ``x`` ``(3, H, W)`` for
    ``target`` (a class, or any ``Objective``: its probability-flavour score is what the curves
    follow; ``logits``: ``x``'s; ``rows``: the forward pass with embeddings, which the open-set
    score needs), and the face's ``RandomCurves`` (``random`` when the caller has them, else
    computed here: pass them on to the next map of this face and objective).
    ``signals``: the method's own (``Heatmap.signals``); ``completeness``: for a method whose
    raw values should add up to the target logit's change from a baseline image, that image
    and their sum (the ``completeness_gap`` signal; its image shares the map's pass)."""
    signals = dict(signals or {})
    objective = target if isinstance(target, Objective) else Objective("class", target)
    outputs = _outputs(forward, rows if objective.needs_rows else None)
    photo_outputs = objective.photo_outputs(x, logits, rows)
    photo = float(objective.scores(*photo_outputs, "probability")[0])
    deleted, blurred = baseline_image(x, DELETION_BASELINE), baseline_image(x, INSERTION_BASELINE)
    plans: list[_Plan | _Ends] = [_Plan(x, deleted, values), _Plan(blurred, x, values)]
    if completeness is not None:
        plans.append(_Ends(completeness.baseline))
    # the map's images and the random map's in batches of their own: a map's scores never
    # depend on whether the face's random curves were already known
    batches = _run(outputs, plans, cancellation)
    scores = [objective.scores(*part, "probability") for part in batches]
    if completeness is not None:
        logit = objective.scores(*photo_outputs, "logit")[0]
        change = float(logit - objective.scores(*batches[2], "logit")[0])
        signals["completeness_gap"] = abs(completeness.total - change) / max(abs(change), 1e-6)
    if random is None:
        random = _random_curves(
            outputs, x, deleted, blurred, values.shape, objective, photo, cancellation
        )
    deletion = np.concatenate([[photo], scores[0], [random.deleted]])
    insertion = np.concatenate([[random.blurred], scores[1], [photo]])
    report = _report(
        area_under(deletion),
        area_under(insertion),
        random,
        photo,
        signals,
        negligible,
    )
    return report, random


def grade_heatmap(
    forward: Forward,
    x: np.ndarray,
    heatmap: Heatmap,
    completeness_baseline: np.ndarray | None = None,
    *,
    rows: Rows | None = None,
    random: RandomCurves | None = None,
    cancellation: Cancellation | None = None,
) -> tuple[QualityReport, RandomCurves]:
    """``grade`` of a method's ``heatmap``: its objective, logits, signals and negligibility, and
    the completeness claim of a method that makes one (``Explainer.completeness_baseline``;
    its raw values' sum is the map's values times its scale)."""
    completeness = None
    if completeness_baseline is not None:
        unscaled = 1.0 if heatmap.negligible else heatmap.scale
        total = float(np.sum(heatmap.values, dtype=np.float64)) * unscaled
        completeness = Completeness(completeness_baseline, total)
    return grade(
        forward,
        x,
        heatmap.values,
        heatmap.explains,
        heatmap.logits,
        rows=rows,
        signals=heatmap.signals,
        negligible=heatmap.negligible,
        completeness=completeness,
        random=random,
        cancellation=cancellation,
    )


class _Plan:
    """The ``STEPS - 1`` inner images of one curve: pixels switch from ``start`` to ``end`` in
    the order ``values`` ranks them (ties in ``RANDOM_SEED``'s random order)."""

    def __init__(self, start: np.ndarray, end: np.ndarray, values: np.ndarray) -> None:
        self.start, self.end = start, end
        order = pixel_order(values, RANDOM_SEED)
        ranks = np.empty(order.size, dtype=np.int64)
        ranks[order] = np.arange(order.size)
        self.ranks = ranks.reshape(values.shape)
        self.counts = np.round(np.linspace(0, order.size, STEPS + 1)).astype(np.int64)[1:-1]

    def __len__(self) -> int:
        return len(self.counts)

    def image(self, index: int) -> np.ndarray:
        return blend(self.end, (self.ranks < self.counts[index])[None], self.start)[0]


class _Ends:
    """The two baseline images themselves."""

    def __init__(self, *images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> np.ndarray:
        return self.images[index]


def _random_curves(
    outputs: Outputs,
    x: np.ndarray,
    deleted: np.ndarray,
    blurred: np.ndarray,
    shape: tuple[int, int],
    objective: Objective,
    photo: float,
    cancellation: Cancellation | None = None,
) -> RandomCurves:
    """The random map's two curves on this face, and the two baselines' scores."""
    noise = random_map(shape)
    plans: list[_Plan | _Ends] = [
        _Plan(x, deleted, noise),
        _Plan(blurred, x, noise),
        _Ends(deleted, blurred),
    ]
    deletion, insertion, ends = (
        objective.scores(*part, "probability") for part in _run(outputs, plans, cancellation)
    )
    return RandomCurves(
        deletion=np.concatenate([[photo], deletion, [ends[0]]]),
        insertion=np.concatenate([[ends[1]], insertion, [photo]]),
    )


Outputs = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
"""A batch -> its ``(N, C)`` logits and ``(N, D)`` embeddings (None where not needed)."""


def _outputs(forward: Forward, rows: Rows | None) -> Outputs:
    if rows is not None:
        return rows
    return lambda batch: (np.asarray(forward(batch)), None)


def _run(
    outputs: Outputs, plans: list[_Plan | _Ends], cancellation: Cancellation | None
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Every plan's images through ``outputs`` in shared batches of ``BATCH``: the ``(n, C)``
    logits (and embeddings) of each plan."""
    index = [(p, i) for p, plan in enumerate(plans) for i in range(len(plan))]
    logits: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    buffer: np.ndarray | None = None
    for start in range(0, len(index), BATCH):
        if cancellation is not None:
            cancellation.check()
        images = [plans[p].image(i) for p, i in index[start : start + BATCH]]
        if buffer is None:
            buffer = batch_buffer(BATCH, images[0].shape)
        z, emb = outputs(np.stack(images, out=buffer[: len(images)]))
        logits.append(np.asarray(z, dtype=np.float64))
        if emb is not None:
            embeddings.append(np.asarray(emb, dtype=np.float32))
    flat = np.concatenate(logits)
    flat_emb = np.concatenate(embeddings) if embeddings else None
    bounds = np.cumsum([0, *(len(plan) for plan in plans)])
    return [
        (flat[a:b], None if flat_emb is None else flat_emb[a:b])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 1e-6 else None


def _report(
    deletion: float,
    insertion: float,
    random: RandomCurves,
    photo: float,
    signals: dict[str, float],
    negligible: bool,
) -> QualityReport:
    random_deletion, random_insertion = area_under(random.deletion), area_under(random.insertion)
    deletion_ratio = _ratio(deletion, random_deletion)
    insertion_ratio = _ratio(insertion, random_insertion)
    verdict, reasons = verdict_of(
        deletion_ratio,
        insertion_ratio,
        photo - random.deleted,
        signals,
        negligible,
        insertion_span=photo - random.blurred,
    )
    return QualityReport(
        verdict=verdict,
        reasons=reasons,
        deletion_auc=deletion,
        insertion_auc=insertion,
        random_deletion_auc=random_deletion,
        random_insertion_auc=random_insertion,
        deletion_ratio=deletion_ratio,
        insertion_ratio=insertion_ratio,
        gain=gain_of(deletion_ratio, insertion_ratio, photo - random.blurred),
        probability=photo,
        deleted_probability=random.deleted,
        blurred_probability=random.blurred,
        signals=signals,
    )


Check = Callable[[float], bool]


def gain_of(
    deletion_ratio: float | None, insertion_ratio: float | None, insertion_span: float = 1.0
) -> float | None:
    """How much better than the random map: the mean of ``1 - deletion_ratio`` and
    ``insertion_ratio - 1`` (0 for a random map, 1 for one that halves the deletion area and
    doubles the insertion area), or ``1 - deletion_ratio`` alone where insertion cannot measure
    (``insertion_span`` below ``MIN_SPAN``). None without a deletion ratio."""
    if deletion_ratio is None:
        return None
    if insertion_span < MIN_SPAN or insertion_ratio is None:
        return 1.0 - deletion_ratio
    return ((1.0 - deletion_ratio) + (insertion_ratio - 1.0)) / 2.0


def verdict_of(
    deletion_ratio: float | None,
    insertion_ratio: float | None,
    span: float,
    signals: Mapping[str, float],
    negligible: bool = False,
    insertion_span: float = 1.0,
) -> tuple[Verdict, tuple[str, ...]]:
    """``RULE``, as code: the verdict and the reasons that decided it. ``span``: how far
    deleting every pixel moves the target's probability; ``insertion_span``: how far the
    blurred face is below the photo (the insertion curve's rise)."""
    gain = gain_of(deletion_ratio, insertion_ratio, insertion_span)
    agreement = signals.get("split_half_agreement")
    unreliable = []
    if negligible:
        unreliable.append("the map is negligible: it holds no evidence")
    if span < MIN_SPAN:
        unreliable.append(
            f"deleting the whole face moves the score by {span:.3f} (< {MIN_SPAN}): the test "
            f"cannot tell this map from noise (a score already near its floor, such as a "
            f"stranger's open-set score, has nothing left to delete)"
        )
    if gain is None or gain < MIN_GAIN:
        unreliable.append(
            f"gain {_show(gain)} < {MIN_GAIN}: no clearly better than a random map (deletion "
            f"ratio {_show(deletion_ratio)}, insertion ratio {_show(insertion_ratio)})"
        )
    if agreement is not None and agreement < MIN_AGREEMENT:
        unreliable.append(
            f"its two halves of samples agree {agreement:.2f} (< {MIN_AGREEMENT}): mostly noise"
        )
    if unreliable or gain is None or deletion_ratio is None:
        return "unreliable", tuple(unreliable)
    weak = []
    if gain < STRONG_GAIN:
        weak.append(f"gain {gain:.2f} < {STRONG_GAIN}")
    if deletion_ratio >= 1.0:
        weak.append(f"deletion ratio {deletion_ratio:.2f}: no better than a random map")
    if insertion_span < MIN_SPAN or insertion_ratio is None:
        weak.append(
            f"the blurred face is within {MIN_SPAN} of the photo's probability "
            f"({insertion_span:.3f}): the insertion test cannot measure this map"
        )
    elif insertion_ratio <= 1.0:
        weak.append(f"insertion ratio {insertion_ratio:.2f}: no better than a random map")
    limits: dict[str, tuple[Check, str]] = {
        "split_half_agreement": (lambda v: v >= STRONG_AGREEMENT, f">= {STRONG_AGREEMENT}"),
        "completeness_gap": (lambda v: v <= MAX_COMPLETENESS_GAP, f"<= {MAX_COMPLETENESS_GAP}"),
        "surrogate_r2": (lambda v: v >= MIN_SURROGATE_R2, f">= {MIN_SURROGATE_R2}"),
    }
    for name, (holds, wanted) in limits.items():
        if name in signals and not holds(signals[name]):
            weak.append(f"{name} {signals[name]:.2f}, wanted {wanted}")
    if weak:
        return "weak", tuple(weak)
    return "strong", (
        f"gain {gain:.2f} over a random map (deletion ratio {deletion_ratio:.2f}, insertion "
        f"ratio {_show(insertion_ratio)}), and the method's own signals hold",
    )


def _show(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}"
