"""The committed bundle's meta.json and open-set gallery, read once per test module."""

from __future__ import annotations

import pytest

from service.bundle.checks import load_gallery
from service.bundle.format import read_meta


@pytest.fixture(scope="module")
def meta(default_bundle):
    return read_meta(default_bundle)


@pytest.fixture(scope="module")
def gallery(default_bundle, meta):
    return load_gallery(default_bundle, meta)
