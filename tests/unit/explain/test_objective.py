"""What a map explains (``service.explain.objective``): the open-set score as the bundle serves
it, every kind of objective in both flavours, and the questions and classes that are refused.
The logits and embeddings are the committed bundle's on real faces: test-split faces and
held-out strangers (meta.json open_set.held_out)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.bundle.format import BundleMeta
from service.bundle.open_set import OpenSetRule, open_set_rule
from service.bundle.preprocess import Preprocessor
from service.errors import OpenSetUnavailable, UnknownClass
from service.explain import EXPLAINERS, ModelHandle
from service.explain.objective import OPEN_SET, Objective, OpenSetScore, Question, resolve
from service.explain.twin import twin_embedding
from service.faces.aligned import whole_image
from service.inference.engine import create_session
from service.inference.model import explainable

STRANGERS_PER_IDENTITY = 3


@pytest.fixture(scope="module")
def gallery(default_bundle: Path) -> np.ndarray:
    return np.load(default_bundle / "open_set" / "gallery.npy")


@pytest.fixture(scope="module")
def rule(bundle_meta: BundleMeta, gallery: np.ndarray) -> OpenSetRule:
    """The bundle's served decision (fused score, bundle threshold)."""
    served = open_set_rule(bundle_meta, gallery, None)
    assert served is not None and served.fusion is not None
    return served


@pytest.fixture(scope="module")
def outputs(
    default_bundle: Path, bundle_meta: BundleMeta, data_root: Path, preprocess: Preprocessor
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` logits and ``(N, D)`` embeddings from the bundle's ONNX graph: one test-split
    face per class, then a few photos of each held-out stranger, framed as the service frames
    a whole photo."""
    assert bundle_meta.open_set is not None
    split = json.loads((default_bundle / "split.json").read_text())
    first_of_class: dict[int, str] = {}
    for relative, label in split["splits"]["test"]:
        first_of_class.setdefault(label, relative)
    known = [data_root / "celebs8" / first_of_class[label] for label in sorted(first_of_class)]
    strangers = [
        path
        for who in bundle_meta.open_set.model_dump()["held_out"]["unknown_identities"]
        for path in sorted((data_root / "others" / who).glob("*.png"))[:STRANGERS_PER_IDENTITY]
    ]
    framing = bundle_meta.input.framing
    crops = [whole_image(Image.open(p).convert("RGB"), framing).crop for p in known + strangers]
    session = create_session(default_bundle / "model.onnx", "cpu", 2)
    logits, embeddings = session.run(
        ["logits", "embedding"], {"input": np.stack([preprocess(crop) for crop in crops])}
    )
    return logits, embeddings


def test_the_served_score_is_the_bundles_rule_on_real_faces(rule, outputs):
    logits, embeddings = outputs
    score = explainable(rule)
    expected = np.array([rule(z, e) for z, e in zip(logits, embeddings, strict=True)])

    value = score.value(torch.from_numpy(logits), torch.from_numpy(embeddings)).numpy()
    log_odds = score.log_odds(torch.from_numpy(logits), torch.from_numpy(embeddings)).numpy()

    assert score.fused and score.needs_embedding
    np.testing.assert_allclose(value, expected, atol=1e-5)
    np.testing.assert_allclose(log_odds, np.log(expected / (1 - expected)), atol=1e-4)
    # the faces lie on both sides of the threshold: both verdicts are checked
    known = expected >= rule.threshold
    assert known[:8].sum() >= 6 and (~known[8:]).sum() >= 6


@pytest.mark.parametrize(
    "part", ["max_softmax_probability", "max_logit", "nearest_training_face_cosine"]
)
def test_a_single_part_score_is_the_rules_part_in_both_flavours(gallery, outputs, part):
    logits, embeddings = outputs
    single = OpenSetRule(part, 0.5, None, "bundle", None, gallery)
    score = OpenSetScore((part,), gallery)
    expected = np.array([single(z, e) for z, e in zip(logits, embeddings, strict=True)])

    for flavour in (score.value, score.log_odds):
        got = flavour(torch.from_numpy(logits), torch.from_numpy(embeddings)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert score.needs_embedding == (part == "nearest_training_face_cosine")


def test_a_score_of_the_embedding_needs_one_and_unknown_parts_are_refused(rule, outputs):
    logits = torch.from_numpy(outputs[0])

    with pytest.raises(OpenSetUnavailable, match="embedding"):
        explainable(rule).log_odds(logits, None)
    logit_only = OpenSetScore(("max_logit",))
    np.testing.assert_allclose(logit_only.value(logits, None), logits.amax(1), rtol=1e-6)
    with pytest.raises(ValueError, match="cosine_to_mean"):
        OpenSetScore(("cosine_to_mean",))
    with pytest.raises(ValueError):
        OpenSetScore(())


# -- Objective.scores ------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_class_objective_scores_its_logit_and_its_probability(outputs):
    logits = outputs[0].astype(np.float64)
    objective = Objective("class", 3)

    np.testing.assert_allclose(objective.scores(logits, None, "logit"), logits[:, 3])
    np.testing.assert_allclose(objective.scores(logits, None, "probability"), softmax(logits)[:, 3])
    np.testing.assert_allclose(
        objective.differentiable(torch.from_numpy(logits)).numpy(), logits[:, 3]
    )


def test_a_contrast_scores_the_logit_gap_and_the_targets_share_of_the_two(outputs):
    logits = outputs[0].astype(np.float64)
    objective = Objective("contrast", 2, contrast=5)
    p = softmax(logits)

    gap = objective.scores(logits, None, "logit")
    share = objective.scores(logits, None, "probability")

    np.testing.assert_allclose(gap, logits[:, 2] - logits[:, 5])
    np.testing.assert_allclose(gap, np.log(p[:, 2] / p[:, 5]), atol=1e-9)
    np.testing.assert_allclose(share, p[:, 2] / (p[:, 2] + p[:, 5]), atol=1e-12)
    np.testing.assert_allclose(
        objective.differentiable(torch.from_numpy(logits)).numpy(), gap, atol=1e-12
    )
    # the reverse question is the same number, negated (and its share the complement)
    reverse = Objective("contrast", 5, contrast=2)
    np.testing.assert_allclose(reverse.scores(logits, None, "logit"), -gap)
    np.testing.assert_allclose(reverse.scores(logits, None, "probability"), 1 - share)


def test_an_open_set_objective_scores_the_served_score_through_the_embedding(rule, outputs):
    logits, embeddings = outputs
    objective = Objective("open_set", 0, open_set=explainable(rule))
    expected = np.array([rule(z, e) for z, e in zip(logits, embeddings, strict=True)])

    value = objective.scores(logits, embeddings, "probability")
    log_odds = objective.scores(logits, embeddings, "logit")

    np.testing.assert_allclose(value, expected, atol=1e-5)
    np.testing.assert_allclose(log_odds, np.log(expected / (1 - expected)), atol=1e-4)
    differentiable = objective.differentiable(
        torch.from_numpy(logits), torch.from_numpy(embeddings)
    )
    np.testing.assert_allclose(differentiable.detach().numpy(), log_odds, atol=1e-5)
    assert objective.needs_rows


def test_a_scorer_reads_the_embedding_through_rows_and_refuses_without_them(rule, outputs):
    logits, embeddings = outputs
    objective = Objective("open_set", 0, open_set=explainable(rule))
    batch = np.zeros((len(logits), 3, 4, 4), dtype=np.float32)

    scorer = objective.scorer(lambda b: logits, lambda b: (logits, embeddings), "probability")
    np.testing.assert_allclose(scorer(batch), objective.scores(logits, embeddings, "probability"))
    with pytest.raises(OpenSetUnavailable, match="embedding"):
        objective.scorer(lambda b: logits, None, "probability")
    # a class needs only logits: no rows asked
    plain = Objective("class", 1).scorer(lambda b: logits, None, "logit")
    np.testing.assert_allclose(plain(batch), logits[:, 1])


# -- resolve and Question --------------------------------------------------------------------


LOGITS = np.array([0.5, 3.0, -1.0, 2.0], dtype=np.float32)  # predicted: class 1


def test_resolve_fills_in_the_predicted_class():
    assert resolve(Question(), LOGITS, None) == Objective("class", 1)
    assert resolve(Question(2), LOGITS, None) == Objective("class", 2)
    assert resolve(Question(None, 3), LOGITS, None) == Objective("contrast", 1, 3)
    assert resolve(Question(0, 1), LOGITS, None) == Objective("contrast", 0, 1)
    assert resolve(Question(None, 3), LOGITS, None).key == "contrast:1-3"


def test_resolve_gives_the_open_set_score_about_the_predicted_class(rule):
    score = explainable(rule)
    objective = resolve(Question(open_set=True), LOGITS, score)

    assert objective == Objective("open_set", 1, open_set=score)
    assert objective.key == OPEN_SET
    with pytest.raises(OpenSetUnavailable, match="no open-set score"):
        resolve(Question(open_set=True), LOGITS, None)


@pytest.mark.parametrize(
    ("question", "message"),
    [
        (Question(4), "target 4 is not a class index: valid 0..3"),
        (Question(-1), "target -1 is not a class index"),
        (Question(None, 7), "contrast 7 is not a class index"),
        (Question(True), "target must be a class index, got True"),
        (Question(2, 2), "contrast is the target itself"),
        (Question(None, 1), "contrast is the target itself \\(class 1\\)"),  # the predicted one
    ],
)
def test_resolve_refuses_classes_the_model_lacks_and_a_contrast_with_itself(question, message):
    with pytest.raises(UnknownClass, match=message):
        resolve(question, LOGITS, None)


@pytest.mark.parametrize(("target", "contrast"), [(2, None), (None, 2), (0, 3)])
def test_a_question_of_the_open_set_score_takes_no_class(target, contrast):
    with pytest.raises(UnknownClass, match="no other target and no contrast"):
        Question(target, contrast, open_set=True)


def test_question_keys_tell_the_questions_apart():
    keys = {Question().key, Question(2).key, Question(2, 3).key, Question(3, 2).key}

    assert len(keys) == 4
    assert Question(open_set=True).key == OPEN_SET
    assert Question.of(2) == Question(2) and Question.of(None) == Question()
    assert Question.of(Question(1, 2)) == Question(1, 2)


# -- the twin's embedding --------------------------------------------------------------------


def test_the_twins_embedding_is_read_only_for_a_score_that_needs_it(rule):
    embedding = torch.ones((1, 128))
    open_set = Objective("open_set", 0, open_set=explainable(rule))

    assert twin_embedding(open_set, {"embedding": embedding}) is embedding
    assert twin_embedding(Objective("class", 0), {}) is None
    assert (
        twin_embedding(Objective("open_set", 0, open_set=OpenSetScore(("max_logit",))), {}) is None
    )
    with pytest.raises(OpenSetUnavailable, match="no embedding output"):
        twin_embedding(open_set, {"layer4": embedding})


class TwinWithoutEmbedding(torch.nn.Module):
    """An older bundle's twin: logits and activations, no ``embedding``."""

    def __init__(self, twin: torch.nn.Module) -> None:
        super().__init__()
        self.twin = twin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, activations = self.twin(x)
        return logits, {k: v for k, v in activations.items() if k != "embedding"}


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "gradcam"])
def test_a_gradient_map_of_the_open_set_score_needs_the_twins_embedding(handle, face, rule, method):
    x, _ = face
    score = explainable(rule)
    older = ModelHandle(
        handle.forward, TwinWithoutEmbedding(handle.twin), handle.gradcam_layer, open_set=score
    )
    current = ModelHandle(handle.forward, handle.twin, handle.gradcam_layer, open_set=score)
    explainer = EXPLAINERS[method]
    params = explainer.Params(**({"steps": 4} if method == "integrated_gradients" else {}))

    with pytest.raises(OpenSetUnavailable, match="no embedding output"):
        explainer(older).run(x, Question(open_set=True), params)
    heatmap = explainer(current).run(x, Question(open_set=True), params)
    assert heatmap.explains.kind == "open_set"
    assert math.isfinite(float(np.abs(heatmap.values).max()))
