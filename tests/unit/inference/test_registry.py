"""The model registry with stand-in models: first-use loads (once for concurrent requests), the
LRU bound with the default kept, leases that keep an unloaded model open, failures and names."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from service.errors import ModelUnavailable, UnknownModel
from service.inference.model import ServingModel
from service.inference.registry import Bundle, DuplicateModel, ModelRegistry, discover
from service.observability.metrics import ServiceMetrics

DEFAULT = "base"


class StandIn:
    """What the registry uses of a ``ServingModel``: its name, ``start()`` and ``close()``."""

    def __init__(self, name: str) -> None:
        self.meta = SimpleNamespace(name=name)
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True


def _bundle(name: str) -> Bundle:
    return Bundle(Path(f"/bundles/{name}"), cast(Any, SimpleNamespace(name=name)))


class Loads:
    """The registry's loader: a ``StandIn`` per path, counted; ``fail`` names bundles whose
    load raises; ``gate``, when set, holds every load until it is set."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.count: dict[str, int] = {}
        self.made: dict[str, StandIn] = {}
        self.fail = fail
        self.gate: threading.Event | None = None

    def __call__(self, path: Path) -> ServingModel:
        if self.gate is not None:
            self.gate.wait(5)
        self.count[path.name] = self.count.get(path.name, 0) + 1
        if path.name in self.fail:
            raise ValueError("a check failed")
        self.made[path.name] = StandIn(path.name)
        return cast(ServingModel, self.made[path.name])


def _registry(loads: Loads, max_loaded: int, names: tuple[str, ...] = ("a", "b", "c")) -> Any:
    bundles = {name: _bundle(name) for name in (DEFAULT, *names)}
    default = cast(ServingModel, StandIn(DEFAULT))
    return ModelRegistry(
        bundles, default, max_loaded, 1, loads, lambda model: model.start(), ServiceMetrics()
    )


def _sample(registry: ModelRegistry, name: str, **labels: str) -> float | None:
    return registry.metrics.registry.get_sample_value(f"celebxai_{name}", labels)


def _loaded(registry: ModelRegistry) -> list[str]:
    return [name for name in registry.names if registry.loaded(name) is not None]


def test_a_model_is_loaded_on_first_use_once_for_concurrent_requests() -> None:
    async def scenario() -> None:
        loads = Loads()
        registry = _registry(loads, max_loaded=2)
        assert _loaded(registry) == [DEFAULT]
        loads.gate = threading.Event()
        pending = [asyncio.ensure_future(registry.lease("a")) for _ in range(5)]
        await asyncio.sleep(0.05)
        loads.gate.set()
        leases = await asyncio.gather(*pending)
        assert loads.count == {"a": 1}
        assert {id(lease.model) for lease in leases} == {id(loads.made["a"])}
        assert loads.made["a"].started
        assert registry.loaded("a").users == 5

    asyncio.run(scenario())


def test_the_least_recently_used_other_model_is_unloaded_and_the_default_kept() -> None:
    async def scenario() -> None:
        loads = Loads()
        registry = _registry(loads, max_loaded=3)
        (await registry.lease("a")).release()
        (await registry.lease("b")).release()
        (await registry.lease("a")).release()  # b is now the least recently used
        (await registry.lease(DEFAULT)).release()
        (await registry.lease("c")).release()
        assert _loaded(registry) == [DEFAULT, "a", "c"]
        await asyncio.sleep(0)
        assert loads.made["b"].closed and not loads.made["a"].closed
        assert _sample(registry, "model_evictions_total", model="b") == 1
        assert _sample(registry, "models_loaded") == 3

    asyncio.run(scenario())


def test_an_unloaded_model_stays_open_until_its_last_lease_ends() -> None:
    async def scenario() -> None:
        loads = Loads()
        registry = _registry(loads, max_loaded=2)
        lease = await registry.lease("a")
        job = registry.hold(lease.model)  # a job outliving its request
        lease.release()
        (await registry.lease("b")).release()  # unloads a: max 2 with the default
        assert _loaded(registry) == [DEFAULT, "b"]
        await asyncio.sleep(0)
        assert not loads.made["a"].closed, "closed under a job that holds it"
        assert _sample(registry, "models_loaded") == 3
        job.release()
        job.release()  # idempotent
        await asyncio.sleep(0)
        assert loads.made["a"].closed
        assert _sample(registry, "models_loaded") == 2
        # asked for again, it is loaded again
        (await registry.lease("a")).release()
        assert loads.count["a"] == 2

    asyncio.run(scenario())


def test_with_a_limit_of_one_the_model_in_use_is_loaded_beside_the_default() -> None:
    async def scenario() -> None:
        loads = Loads()
        registry = _registry(loads, max_loaded=1)
        (await registry.lease("a")).release()
        assert _loaded(registry) == [DEFAULT, "a"]
        (await registry.lease("b")).release()
        assert _loaded(registry) == [DEFAULT, "b"]

    asyncio.run(scenario())


def test_a_model_that_fails_its_checks_is_unavailable_and_the_others_serve() -> None:
    async def scenario() -> None:
        loads = Loads(fail=("b",))
        registry = _registry(loads, max_loaded=3)
        for _ in range(2):
            with pytest.raises(ModelUnavailable, match="'b' cannot be served"):
                await registry.lease("b")
        assert loads.count["b"] == 1, "a failed bundle is not loaded again"
        assert registry.failure("b") is not None
        (await registry.lease("a")).release()
        assert _sample(registry, "model_loads_total", model="b", outcome="failed") == 1
        assert _sample(registry, "model_loads_total", model="a", outcome="ok") == 1

    asyncio.run(scenario())


def test_an_unknown_name_lists_the_valid_ones() -> None:
    async def scenario() -> None:
        registry = _registry(Loads(), max_loaded=2)
        with pytest.raises(UnknownModel, match="no model 'zz'; valid: base, a, b, c"):
            await registry.lease("zz")

    asyncio.run(scenario())


def _write_bundle(folder: Path, name: str | None) -> None:
    folder.mkdir()
    (folder / "meta.json").write_text("{not json" if name is None else json.dumps({"name": name}))


def test_discover_skips_unreadable_bundles_and_refuses_duplicate_names(
    tmp_path: Path, default_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from service.bundle.format import read_meta

    meta = json.loads((default_bundle / "meta.json").read_text())
    for folder, name in (("one", "m1"), ("two", "m2")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "meta.json").write_text(json.dumps({**meta, "name": name}))
    _write_bundle(tmp_path / "broken", None)
    (tmp_path / "no-meta").mkdir()
    default = Bundle(default_bundle, read_meta(default_bundle))
    found = discover(tmp_path, default)
    assert list(found) == [meta["name"], "m1", "m2"]
    assert "broken is not served: meta.json is not valid JSON" in caplog.text
    (tmp_path / "three").mkdir()
    (tmp_path / "three" / "meta.json").write_text(json.dumps({**meta, "name": "m1"}))
    with pytest.raises(DuplicateModel, match="two bundles are named 'm1'"):
        discover(tmp_path, default)
    assert list(discover(tmp_path / "absent", default)) == [meta["name"]]
    (tmp_path / "three" / "meta.json").write_text(json.dumps(meta))  # the default's name
    assert list(discover(tmp_path, default)) == [meta["name"], "m1", "m2"]
    assert "three is not served: the default bundle" in caplog.text


def test_two_loads_for_one_free_place_do_not_unload_each_other_s_model_before_it_serves() -> None:
    """With room for one model beside the default, requests for two others at once: each load
    takes the holds of its waiting requests, so the next load unloads that model only once
    they are done with it (without, each load closed the other's fresh model before its
    requests ran: 'engine is not started')."""

    async def scenario() -> None:
        loads = Loads()
        registry = _registry(loads, max_loaded=2)
        loads.gate = threading.Event()
        pending = {
            name: [asyncio.ensure_future(registry.lease(name)) for _ in range(2)]
            for name in ("a", "b")
        }
        await asyncio.sleep(0.05)
        loads.gate.set()
        leases = {name: await asyncio.gather(*tasks) for name, tasks in pending.items()}
        for name, held in leases.items():
            assert all(lease.model is loads.made[name] for lease in held)
            assert not loads.made[name].closed, f"{name} closed while its requests hold it"
        assert loads.count == {"a": 1, "b": 1}
        assert _loaded(registry) == [DEFAULT, "b"]  # a unloaded, kept open for its leases
        for lease in leases["a"]:
            lease.release()
        await asyncio.sleep(0)
        assert loads.made["a"].closed and not loads.made["b"].closed

    asyncio.run(scenario())


def test_a_request_cancelled_while_its_model_loads_takes_no_hold() -> None:
    async def scenario() -> None:
        loads = Loads()
        registry = _registry(loads, max_loaded=2)
        loads.gate = threading.Event()
        waiting = asyncio.ensure_future(registry.lease("a"))
        staying = asyncio.ensure_future(registry.lease("a"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.sleep(0)
        loads.gate.set()
        lease = await staying
        assert registry.loaded("a").users == 1
        lease.release()
        assert registry.loaded("a").users == 0
        (await registry.lease("b")).release()  # room for b: a, unused, is closed at once
        await asyncio.sleep(0)
        assert loads.made["a"].closed

    asyncio.run(scenario())
