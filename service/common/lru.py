"""A small, bounded, thread-safe LRU of computed results (heatmaps, syntheses: immutable values).

Bounded twice, in entries and in bytes (the arrays and byte strings its values hold,
``nbytes``), so that no sequence of requests can make it hold more than ``max_bytes``; its size
is exported in ``/metrics`` (``service.observability.cache_metrics``). Values are immutable, so a
hit can be returned as is.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

DEFAULT_MAX_ENTRIES = 64
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


def nbytes(value: Any) -> int:
    """Bytes held by ``value``'s arrays and byte strings: its own, or its dataclass fields'."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, bytes | bytearray):
        return len(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, field.name)) for field in dataclasses.fields(value))
    return 0


class LruCache:
    """Least-recently-used results, at most ``max_entries`` and ``max_bytes`` (``nbytes`` of
    the values); 0 entries disables caching. A value larger than ``max_bytes`` is not kept."""

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.bytes = 0  # nbytes of the values held
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: str, value: Any) -> None:
        size = nbytes(value)
        if self.max_entries == 0 or size > self.max_bytes:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self.bytes -= previous[1]
            self._entries[key] = (value, size)
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
