"""Several model bundles side by side: a name to a loaded ``ServingModel``, with an LRU bound.

``discover`` lists the bundles of ``models_dir`` (every subfolder with a ``meta.json``, known by
its ``name``); ``ModelRegistry`` holds them. The default bundle is loaded at start and never
unloaded; another is loaded on its first use, with every load-time check of ``load_model``
(concurrent first requests wait for the same load), and beyond ``max_loaded_models`` the least
recently used one other than the default is unloaded. A request holds its model through a
``Lease``: an unloaded model's resources are freed only once its last lease is given back, so
no request or job fails because its model was unloaded under it. A bundle that fails its
checks answers 503 ``model_unavailable`` (not tried again until a restart); the others serve.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from service.bundle.format import META_FILE, BundleError, BundleMeta, read_meta
from service.errors import ModelUnavailable, UnknownModel
from service.inference.allocator import release_free_memory
from service.inference.engine import EngineError
from service.inference.model import ServingModel
from service.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class DuplicateModel(ValueError):
    """Two bundles with the same name: the service refuses to start."""


@dataclass(frozen=True)
class Bundle:
    """A bundle of the catalog, as its meta.json describes it (not loaded)."""

    path: Path
    meta: BundleMeta

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def size_bytes(self) -> int:
        """The bytes of its files as meta.json records them, meta.json included."""
        recorded = sum(info.bytes or 0 for info in self.meta.files.values())
        return recorded + (self.path / META_FILE).stat().st_size


def discover(models_dir: Path, default: Bundle) -> dict[str, Bundle]:
    """``default`` and every bundle of ``models_dir``'s subfolders, by name (sorted, the default
    first). A folder whose meta.json cannot be read is left out, saying why in the log, and so
    is one named as the default (which is served under that name); two bundles of
    ``models_dir`` of one name raise ``DuplicateModel``."""
    bundles = {default.name: default}
    if not models_dir.is_dir():
        log.warning("models_dir %s is not a folder: serving the default bundle alone", models_dir)
        return bundles
    for folder in sorted(path for path in models_dir.iterdir() if path.is_dir()):
        if not (folder / META_FILE).is_file() or folder.resolve() == default.path.resolve():
            continue
        try:
            meta = read_meta(folder)
        except BundleError as exc:
            log.error("model folder %s is not served: %s", folder, exc)
            continue
        if meta.name == default.name:
            # ``--model DIR`` for another build of a bundle in models_dir: as before, it serves
            log.warning(
                "model folder %s is not served: the default bundle %s has its name %r",
                folder,
                default.path,
                meta.name,
            )
            continue
        if meta.name in bundles:
            raise DuplicateModel(
                f"two bundles are named {meta.name!r}: {bundles[meta.name].path} and {folder}; "
                "every bundle of models_dir (and the default) needs a name of its own"
            )
        bundles[meta.name] = Bundle(folder, meta)
    log.info("models: %s (default %s)", ", ".join(bundles), default.name)
    return bundles


def public_reason(exc: Exception) -> str:
    """Why loading failed, in words a client may read: a ``BundleError`` or ``EngineError``
    says it without paths or dumps; anything else is named by its type only (details in the
    log)."""
    if isinstance(exc, (BundleError, EngineError)):
        return str(exc)
    return f"loading failed ({type(exc).__name__}); the service log has the details"


@dataclass(eq=False)  # by identity: kept in sets
class Loaded:
    """A loaded model, the leases held on it, and what loading it cost."""

    model: ServingModel
    rss_bytes: int | None
    """the process's RSS growth while it loaded (bytes; ``measured``)"""
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)
    unloaded: bool = False
    """out of the registry: closed when its last lease is given back"""


class Lease:
    """A hold on a loaded model: it stays usable until ``release()`` (idempotent). ``taken``:
    the hold was already counted for this lease (by the load it waited for)."""

    def __init__(self, registry: ModelRegistry, loaded: Loaded, taken: bool = False) -> None:
        self.registry, self.loaded, self.released = registry, loaded, False
        if not taken:
            loaded.users += 1
        loaded.last_used = time.monotonic()

    @property
    def model(self) -> ServingModel:
        return self.loaded.model

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.registry._release(self.loaded)


Loader = Callable[[Path], ServingModel]


def resident_bytes() -> int | None:
    """The process's resident set size (bytes), from ``/proc/self/statm``; None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def measured(load: Callable[[], ServingModel]) -> tuple[ServingModel, int | None]:
    """``load()``'s model and the process's RSS growth while it ran (bytes; None where the
    RSS cannot be read). Loads run one at a time, but whatever else the process allocated
    meanwhile counts too."""
    before = resident_bytes()
    model = load()
    after = resident_bytes()
    return model, None if before is None or after is None else max(after - before, 0)


class ModelRegistry:
    """The bundles of ``discover``, the default loaded, the others on first use.

    ``load(path)`` loads and checks one bundle (blocking: run on a worker thread) and
    ``start(model)`` starts it serving; ``max_loaded`` counts every loaded model, the default
    included (with 1, the one other model in use is loaded beside the default until another
    replaces it). All methods run on the event loop.
    """

    def __init__(
        self,
        bundles: dict[str, Bundle],
        default: ServingModel,
        max_loaded: int,
        default_rss: int | None,
        load: Loader,
        start: Callable[[ServingModel], None],
        metrics: ServiceMetrics,
    ) -> None:
        self.bundles = bundles
        self.default = default.meta.name
        self.max_loaded = max_loaded
        self._load, self._start, self.metrics = load, start, metrics
        self._loaded: dict[str, Loaded] = {self.default: Loaded(default, default_rss)}
        self._loading: dict[str, asyncio.Future[Loaded]] = {}
        # requests waiting for a load: it takes their holds as it ends, before another load
        # can make room by unloading it (else two loads for one free place unload each
        # other's model before its requests run, over and over)
        self._waiting: dict[str, int] = {}
        self._failed: dict[str, str] = {}
        self._one_load = asyncio.Lock()  # loads one at a time: RSS growth is one bundle's
        self._retiring: set[Loaded] = set()  # unloaded, closed when their last lease ends
        self._closing: set[asyncio.Task[None]] = set()
        metrics.models_loaded.set_function(lambda: len(self._held()))

    @property
    def names(self) -> list[str]:
        return list(self.bundles)

    def loaded(self, name: str) -> Loaded | None:
        return self._loaded.get(name)

    def failure(self, name: str) -> str | None:
        return self._failed.get(name)

    async def lease(self, name: str) -> Lease:
        """A lease on model ``name``, loading it first when it is not loaded; 404
        ``unknown_model`` listing the names, 503 ``model_unavailable`` when it failed its checks."""
        if name not in self.bundles:
            raise UnknownModel(f"no model {name!r}; valid: {', '.join(self.bundles)}")
        if (loaded := self._loaded.get(name)) is not None:
            return Lease(self, loaded)
        if name in self._failed:
            raise ModelUnavailable(f"model {name!r} cannot be served: {self._failed[name]}")
        if name not in self._loading:
            task = asyncio.ensure_future(self._load_one(name))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        loading = self._loading[name]
        self._waiting[name] = self._waiting.get(name, 0) + 1
        try:  # the load goes on for the others when this request is cancelled
            loaded = await asyncio.shield(loading)
        except BaseException:
            if loading.done() and not loading.cancelled() and loading.exception() is None:
                self._release(loading.result())  # the hold the load took for this request
            elif name in self._waiting:  # still loading, or its load cancelled: no hold yet
                self._waiting[name] -= 1
            raise
        return Lease(self, loaded, taken=True)

    def hold(self, model: object) -> Lease:
        """One more lease on a model this caller already holds one on (a job outliving its
        request)."""
        for loaded in self._held():
            if loaded.model is model:
                return Lease(self, loaded)
        raise RuntimeError("the model to hold is not loaded")

    async def close(self) -> None:
        """Close every model but the default (the app closes that) and wait for the closing."""
        for name in [name for name in self._loaded if name != self.default]:
            self._unload(name)
        for loaded in self._held():
            if loaded.model is not self._loaded[self.default].model:
                loaded.users = 0
                self._close(loaded)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _load_one(self, name: str) -> Loaded:
        async with self._one_load:
            self._make_room()
            if self._closing:  # the memory of those unloaded idle is free before this load
                await asyncio.gather(*self._closing, return_exceptions=True)
            bundle = self.bundles[name]
            try:
                model, rss = await asyncio.to_thread(measured, lambda: self._load(bundle.path))
            except Exception as exc:  # the model's own 503; the others keep serving
                self._waiting.pop(name, None)
                self._failed[name] = public_reason(exc)
                self.metrics.model_loads.labels(name, "failed").inc()
                log.error("model bundle %s cannot be served: %s", bundle.path, exc, exc_info=exc)
                raise ModelUnavailable(
                    f"model {name!r} cannot be served: {self._failed[name]}"
                ) from exc
            model.url_query = "?" + urlencode({"model": name})
            self._start(model)
            loaded = self._loaded[name] = Loaded(model, rss, users=self._waiting.pop(name, 0))
            self.metrics.model_loads.labels(name, "ok").inc()
            log.info("model %s loaded on first use (RSS +%.0f MiB)", name, (rss or 0) / 2**20)
            return loaded

    def _make_room(self) -> None:
        """Unload the least recently used models other than the default until one more fits."""
        while len(self._loaded) >= self.max_loaded:
            others = [(v.last_used, k) for k, v in self._loaded.items() if k != self.default]
            if not others:
                return
            self._unload(min(others)[1])

    def _unload(self, name: str) -> None:
        loaded = self._loaded.pop(name)
        loaded.unloaded = True
        self.metrics.model_evictions.labels(name).inc()
        log.info("model %s unloaded (least recently used; %d requests on it)", name, loaded.users)
        if loaded.users == 0:
            self._close(loaded)
        else:
            self._retiring.add(loaded)

    def _held(self) -> list[Loaded]:
        """Every model in memory: loaded, and unloaded but still in use."""
        return [*self._loaded.values(), *self._retiring]

    def _release(self, loaded: Loaded) -> None:
        loaded.users -= 1
        loaded.last_used = time.monotonic()
        if loaded.unloaded and loaded.users == 0:
            self._close(loaded)

    def _close(self, loaded: Loaded) -> None:
        self._retiring.discard(loaded)
        task = asyncio.get_running_loop().create_task(_dispose(loaded.model))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _dispose(model: ServingModel) -> None:
    """Close an unloaded model and give its memory back to the system: once the last reference
    is gone, what reference cycles hold is collected and the heaps trimmed (without the trim
    its freed pages mostly stay resident, fragments among live blocks)."""
    await model.close()
    del model
    await asyncio.to_thread(_collect)


def _collect() -> None:
    gc.collect()
    release_free_memory()
