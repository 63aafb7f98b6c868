"""The key of a cached heatmap (the cache itself is ``service.common.lru.LruCache``).

Keys are built by ``cache_key`` from everything that determines a heatmap: the model input
(its digest), the method, its checked parameters, the requested target (or, for a contrast or
the open-set score, the question's ``key``) and the model (the ONNX file's sha256).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np


def array_digest(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    contiguous = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{contiguous.dtype.str}{contiguous.shape}".encode())
    digest.update(contiguous.tobytes())
    return digest.hexdigest()


def cache_key(
    *,
    image_digest: str,
    method: str,
    params: Mapping[str, Any],
    target: int | str | None,
    model_digest: str,
) -> str:
    """One string for one heatmap: parameters in canonical (sorted) JSON."""
    canonical = json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=str)
    return f"{model_digest}|{image_digest}|{method}|{target}|{canonical}"
