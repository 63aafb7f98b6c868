"""What a map explains: one class's score, one class against another, or the stranger verdict.

A request asks a ``Question``; the prediction turns it into an ``Objective``, the score every
method then explains (Prabhushankar et al. 2020 for the contrast, Huber et al. 2024 for a
similarity score):

- ``class``: why the target class (default: the predicted one) -- its logit, or its
  probability;
- ``contrast``: why the target and not the ``contrast`` class -- logit(target) -
  logit(contrast), which is also log(p_target / p_contrast); as a probability, the target's
  probability between the two, p_target / (p_target + p_contrast) = sigmoid of that gap;
- ``open_set``: why one of the classes, or why none -- the open-set score (``OpenSetScore``:
  the bundle's, through the embedding and the gallery of training faces): as a probability, the
  score itself (in [0, 1] for the fused score); as a logit, its log-odds.

Each kind is a number per image in two flavours (``Score``): ``logit`` (what gradient methods
differentiate, and what a completeness claim adds up to) and ``probability`` (bounded: what
quality grading measures, and a perturbation method's default). A map's positive values are
evidence *for* the objective: the target over the contrast, "one of the classes" over "none".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from service.common.softmax import softmax
from service.errors import OpenSetUnavailable, UnknownClass

Kind = Literal["class", "contrast", "open_set"]
Score = Literal["probability", "logit"]
Rows = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""A batched forward pass that returns the ``(N, C)`` logits and the ``(N, D)`` embeddings."""

OPEN_SET = "open_set"
"""The ``target`` that asks for the open-set score (a request's word for ``Question.open_set``)."""
EMBEDDING = "embedding"
"""The twin's output with the embedding (models/README.md)."""

# The parts of an open-set score this module can differentiate (service.bundle.open_set's
# COMPONENTS, by the same names): (N, C) logits, (N, D) embeddings, (G, D) unit gallery -> (N,)
PARTS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "max_softmax_probability": lambda logits, emb, gallery: torch.softmax(logits, 1).amax(1),
    "max_logit": lambda logits, emb, gallery: logits.amax(1),
    "nearest_training_face_cosine": lambda logits, emb, gallery: (
        F.normalize(emb, dim=1) @ gallery.T
    ).amax(1),
}


@dataclass(frozen=True)
class OpenSetScore:
    """The open-set score as a differentiable function of logits and embeddings: one part, or a
    logistic regression over standardised parts (``bias + weights . (part - mean) / scale``,
    through a sigmoid). The same numbers as ``service.bundle.open_set.OpenSetRule`` (tested)."""

    parts: tuple[str, ...]
    gallery: np.ndarray | None = None
    mean: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    weights: tuple[float, ...] | None = None
    bias: float = 0.0

    def __post_init__(self) -> None:
        unknown = [part for part in self.parts if part not in PARTS]
        if unknown or not self.parts:
            raise ValueError(f"cannot explain an open-set score of parts {list(self.parts)}")

    @property
    def fused(self) -> bool:
        return self.weights is not None

    @property
    def needs_embedding(self) -> bool:
        return "nearest_training_face_cosine" in self.parts

    def log_odds(self, logits: torch.Tensor, embeddings: torch.Tensor | None) -> torch.Tensor:
        """``(N,)``: the fused score's log-odds, or the single part itself."""
        gallery = torch.from_numpy(np.asarray(self.gallery, dtype=np.float32))
        if self.needs_embedding and (embeddings is None or self.gallery is None):
            raise OpenSetUnavailable("this open-set score needs the model's embedding")
        empty = torch.zeros((len(logits), 1))
        emb = empty if embeddings is None else embeddings
        parts = torch.stack([PARTS[name](logits, emb, gallery) for name in self.parts], dim=1)
        if not self.fused:
            return parts[:, 0]
        mean, scale = torch.tensor(self.mean), torch.tensor(self.scale)
        weights = torch.tensor(self.weights)
        return ((parts.double() - mean.double()) / scale.double()) @ weights.double() + self.bias

    def value(self, logits: torch.Tensor, embeddings: torch.Tensor | None) -> torch.Tensor:
        """``(N,)``: the score as served (the sigmoid of the log-odds where fused)."""
        odds = self.log_odds(logits, embeddings)
        return torch.sigmoid(odds) if self.fused else odds


@dataclass(frozen=True)
class Question:
    """What a request asks a map to explain: a class (``target``; None: the predicted one),
    optionally against another (``contrast``), or the open-set score (``open_set``)."""

    target: int | None = None
    contrast: int | None = None
    open_set: bool = False

    def __post_init__(self) -> None:
        if self.open_set and (self.target is not None or self.contrast is not None):
            raise UnknownClass(
                "target=open_set explains the open-set score, not a class: it takes no other "
                "target and no contrast"
            )

    @property
    def key(self) -> str:
        """A cache key's part: what the question asks (a class left to the prediction is
        "predicted", resolved once the logits are known: see ``Objective.key``)."""
        if self.open_set:
            return OPEN_SET
        return f"{self.target}|{self.contrast}"

    @classmethod
    def of(cls, target: int | Question | None) -> Question:
        return target if isinstance(target, Question) else cls(target)


@dataclass(frozen=True)
class Objective:
    """A ``Question`` resolved on one input: the score a map explains. ``target`` is the class
    explained (for ``open_set``: the predicted class, the one the verdict is about)."""

    kind: Kind
    target: int
    contrast: int | None = None
    open_set: OpenSetScore | None = None

    @property
    def key(self) -> str:
        """What it explains, for cache keys: ``class:3``, ``contrast:3-6``, ``open_set``."""
        if self.kind == "contrast":
            return f"contrast:{self.target}-{self.contrast}"
        return OPEN_SET if self.kind == "open_set" else f"class:{self.target}"

    @property
    def needs_rows(self) -> bool:
        """Whether its score needs the embedding (a ``Rows`` forward pass)."""
        return self.open_set is not None and self.open_set.needs_embedding

    def differentiable(
        self, logits: torch.Tensor, embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(N,)`` logit-flavour score from the twin's outputs (gradients flow through it)."""
        if self.kind == "open_set":
            assert self.open_set is not None
            return self.open_set.log_odds(logits, embeddings)
        if self.kind == "contrast":
            assert self.contrast is not None
            return logits[:, self.target] - logits[:, self.contrast]
        return logits[:, self.target]

    def scores(self, logits: np.ndarray, embeddings: np.ndarray | None, score: Score) -> np.ndarray:
        """``(N,)`` float64 scores of ``(N, C)`` logits (and ``(N, D)`` embeddings)."""
        if self.kind == "open_set":
            assert self.open_set is not None
            t_logits = torch.from_numpy(np.asarray(logits, dtype=np.float32))
            t_emb = None if embeddings is None else torch.from_numpy(np.asarray(embeddings))
            with torch.no_grad():
                if score == "logit":
                    out = self.open_set.log_odds(t_logits, t_emb)
                else:
                    out = self.open_set.value(t_logits, t_emb)
            return out.double().numpy()
        z = np.asarray(logits, dtype=np.float64)
        if self.kind == "contrast":
            gap = z[:, self.target] - z[:, self.contrast]
            return gap if score == "logit" else 1.0 / (1.0 + np.exp(-gap))
        return z[:, self.target] if score == "logit" else softmax(z)[:, self.target]

    def scorer(
        self, forward: Callable[[np.ndarray], np.ndarray], rows: Rows | None, score: Score
    ) -> Callable[[np.ndarray], np.ndarray]:
        """``(N, 3, H, W)`` batch -> ``(N,)`` scores: through ``rows`` when the score needs the
        embedding, else through ``forward`` (logits)."""
        if not self.needs_rows:
            return lambda batch: self.scores(forward(batch), None, score)
        with_embedding = self._rows(rows)
        return lambda batch: self.scores(*with_embedding(batch), score)

    def photo_outputs(
        self, x: np.ndarray, logits: np.ndarray, rows: Rows | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """What its score reads of the unperturbed ``x`` ``(3, H, W)``: its ``(C,)`` logits as
        a batch of one (no pass), or one pass of ``rows`` where the score needs the embedding."""
        if not self.needs_rows:
            return np.asarray(logits)[None], None
        return self._rows(rows)(x[None])

    @staticmethod
    def _rows(rows: Rows | None) -> Rows:
        if rows is None:
            raise OpenSetUnavailable("the model serves no embedding for the open-set score")
        return rows

    def describe(self, names: list[str]) -> str:
        """The score in words, with class ids (``names``)."""
        if self.kind == "open_set":
            return "the open-set score: how likely the face is one of the classes"
        if self.kind == "contrast":
            assert self.contrast is not None
            return f"logit({names[self.target]}) - logit({names[self.contrast]})"
        return f"the score of {names[self.target]}"


def resolve(question: Question, logits: np.ndarray, open_set: OpenSetScore | None) -> Objective:
    """``question`` on an input with ``(C,)`` ``logits``: the class explained (the predicted
    one unless named), checked; ``UnknownClass`` for a class the model lacks or a contrast
    equal to the target; ``OpenSetUnavailable`` for the open-set score without one."""
    classes, predicted = len(logits), int(np.argmax(logits))
    if question.open_set:
        if open_set is None:
            raise OpenSetUnavailable(
                "this model has no open-set score to explain (its bundle has no open_set block)"
            )
        return Objective("open_set", predicted, open_set=open_set)
    target = _class_index(question.target, classes, "target", predicted)
    if question.contrast is None:
        return Objective("class", target)
    contrast = _class_index(question.contrast, classes, "contrast", predicted)
    if contrast == target:
        raise UnknownClass(
            f"contrast is the target itself (class {target}): a contrast asks why the target "
            "and not another class; name a different class"
        )
    return Objective("contrast", target, contrast)


def _class_index(value: int | None, classes: int, name: str, predicted: int) -> int:
    if value is None:
        return predicted
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UnknownClass(f"{name} must be a class index, got {value!r}")
    if not 0 <= value < classes:
        raise UnknownClass(f"{name} {value} is not a class index: valid 0..{classes - 1}")
    return int(value)
