"""A small, bounded, thread-safe LRU of computed heatmaps.

Keys are built by ``cache_key`` from everything that determines a heatmap: the model input
(its digest), the method, its checked parameters, the requested target and the model (the
ONNX file's sha256). Heatmaps are immutable, so a hit can be returned as is.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .heatmap import Heatmap

DEFAULT_MAX_ENTRIES = 64


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
    target: int | None,
    model_digest: str,
) -> str:
    """One string for one heatmap: parameters in canonical (sorted) JSON."""
    canonical = json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=str)
    return f"{model_digest}|{image_digest}|{method}|{target}|{canonical}"


class ExplanationCache:
    """Least-recently-used heatmaps, at most ``max_entries`` (0 disables caching)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Heatmap] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Heatmap | None:
        with self._lock:
            heatmap = self._entries.get(key)
            if heatmap is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return heatmap

    def put(self, key: str, heatmap: Heatmap) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key] = heatmap
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get_or_compute(self, key: str, compute: Callable[[], Heatmap]) -> tuple[Heatmap, bool]:
        """The cached heatmap for ``key``, or ``compute()`` stored under it; and whether it was
        a hit. Two concurrent misses may both compute: the lock is not held while computing."""
        cached = self.get(key)
        if cached is not None:
            return cached, True
        heatmap = compute()
        self.put(key, heatmap)
        return heatmap, False
