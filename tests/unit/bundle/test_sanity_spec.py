"""meta.json's ``sanity`` key: optional, parsed into ``SanitySpec``, wrong shapes refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from service.bundle.format import META_FILE, BundleMeta, SanitySpec

SANITY: dict[str, Any] = {
    "test": "cascading_model_parameter_randomisation",
    "rule": "passes when the mean Spearman similarity is below 0.5 at every stage",
    "pass_below": 0.5,
    "faces": 2,
    "split": "test",
    "created_at": "2026-12-06T18:00:00+00:00",
    "methods": {
        "gradcam": {
            "passed": True,
            "stages": [
                {"stage": "fc", "spearman": 0.31, "ssim": 0.4},
                {"stage": "layer4", "spearman": 0.12, "ssim": 0.2},
            ],
        },
        "gradient": {
            "passed": False,
            "stages": [{"stage": "fc", "spearman": 0.9, "ssim": 0.8, "note": "kept"}],
        },
    },
}


@pytest.fixture
def meta_dict(default_bundle) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((default_bundle / META_FILE).read_text())
    meta.pop("sanity", None)
    return meta


def test_meta_without_sanity_reads_as_none(meta_dict):
    assert BundleMeta.model_validate(meta_dict).sanity is None


def test_meta_with_sanity_is_parsed_in_cascade_order(meta_dict):
    meta = BundleMeta.model_validate({**meta_dict, "sanity": SANITY})

    sanity = meta.sanity
    assert isinstance(sanity, SanitySpec)
    assert sanity.pass_below == 0.5
    assert [s.stage for s in sanity.methods["gradcam"].stages] == ["fc", "layer4"]
    assert sanity.methods["gradcam"].passed is True
    assert sanity.methods["gradient"].passed is False
    # Unknown keys pass through, like the rest of meta.json.
    assert sanity.methods["gradient"].stages[0].model_extra == {"note": "kept"}


def test_an_unknown_test_name_is_refused(meta_dict):
    with pytest.raises(ValidationError, match="cascading_model_parameter_randomisation"):
        BundleMeta.model_validate({**meta_dict, "sanity": {**SANITY, "test": "head_only"}})


def test_a_stage_without_its_similarity_is_refused(meta_dict):
    broken = json.loads(json.dumps(SANITY))
    del broken["methods"]["gradcam"]["stages"][0]["spearman"]

    with pytest.raises(ValidationError, match="spearman"):
        BundleMeta.model_validate({**meta_dict, "sanity": broken})
