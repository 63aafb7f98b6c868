"""``GET /models``: the bundles served side by side (``model=`` on every endpoint)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.bundle.format import BundleMeta


class ModelMetrics(BaseModel):
    """What the bundle's meta.json records of its quality: always ``test_accuracy`` and
    ``open_set_auroc`` (null where it has none), and ``<split>_accuracy`` for every split it
    has, ``open_set_false_rejection_rate`` and ``open_set_false_acceptance_rate`` on the
    held-out faces and strangers where it has an open-set rule."""

    model_config = ConfigDict(extra="allow")

    test_accuracy: float | None = Field(description="accuracy on the test split")
    open_set_auroc: float | None = Field(
        description="AUROC of the open-set score, the held-out faces against held-out strangers"
    )

    @classmethod
    def of(cls, meta: BundleMeta) -> ModelMetrics:
        found: dict[str, Any] = {}
        for split, values in meta.metrics.items():
            if isinstance(values, dict) and isinstance(values.get("accuracy"), (int, float)):
                found[f"{split}_accuracy"] = float(values["accuracy"])
        held_out = (meta.open_set.model_extra or {}).get("held_out") if meta.open_set else None
        for name in ("auroc", "false_rejection_rate", "false_acceptance_rate"):
            if isinstance(held_out, dict) and isinstance(held_out.get(name), (int, float)):
                found[f"open_set_{name}"] = float(held_out[name])
        found.setdefault("test_accuracy", None)
        found.setdefault("open_set_auroc", None)
        return cls(**found)


class ModelSummary(BaseModel):
    name: str = Field(description="what model= takes")
    version: str
    architecture: dict[str, Any] = Field(description="meta.json's architecture")
    default: bool = Field(description="the model a request without model= uses")
    loaded: bool = Field(description="in memory now (the others are loaded on first use)")
    classes: list[str] = Field(description="the classes' display names, in logit order")
    metrics: ModelMetrics
    size_bytes: int = Field(description="its files' bytes, meta.json included")
    rss_bytes: int | None = Field(
        description="the service's resident memory growth when it was loaded on first use "
        "(bytes); null while it is not loaded, and for the default (loaded at start)"
    )
    unavailable: str | None = Field(
        None, description="why it cannot be served (it failed its load-time checks), if so"
    )


class ModelsResponse(BaseModel):
    default: str = Field(description="the default model's name")
    max_loaded: int = Field(description="models loaded at once at most (max_loaded_models)")
    models: list[ModelSummary] = Field(description="every model, the default first")
