"""A model's insight inspector goes with the model: once the registry lets go of a model that
answered an ``/insight`` request, nothing keeps it in memory."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from service.bundle.format import read_meta
from service.bundle.preprocess import Preprocessor
from service.inference.model import ServingModel
from service.insight.inspector import Inspector
from service.settings import Settings
from service.state import ServiceState


def _model(bundle: Path) -> ServingModel:
    """A ``ServingModel`` of ``bundle`` without its engine and twin (neither is used here)."""
    meta = read_meta(bundle)
    return ServingModel(bundle, meta, Preprocessor(meta.input), engine=None, twin=None, report=None)


def test_an_unloaded_models_inspector_does_not_keep_it_alive(default_bundle: Path) -> None:
    state = ServiceState(Settings(_env_file=None))
    state.inspector = Inspector(_model(default_bundle))  # the default model's (the lifespan's)
    other = _model(default_bundle)  # another model, loaded on first use
    inspector = state.inspector_of(other)  # GET /insight/...?model=other
    assert inspector is not None and inspector.model is other
    assert state.inspector_of(other) is inspector  # made once
    assert inspector.syntheses is state.inspector.syntheses  # one cache of syntheses
    unloaded = weakref.ref(other)
    del other, inspector  # the registry's last reference goes as it unloads the model
    gc.collect()
    assert unloaded() is None
