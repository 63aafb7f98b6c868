"""Scale out over machines: a two-node Ray cluster simulated on this machine
(``ray.cluster_utils.Cluster``, two one-CPU nodes), joined by ``python -m service --ray
--ray-address ...`` as a user joins a cluster, with two Explain replicas of one CPU each
(everything else takes no CPU), so that Ray must place one on each node. Ray's state API
says where the replicas are, and explanations are answered by both.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.image_bytes import face_png
from tests.load.harness import free_port
from tests.scaleout.conftest import API_KEY, Service, start_service, stop_ray_service

# a simulated two-node Ray cluster and a service that joins it
pytestmark = pytest.mark.ray

EXPLANATIONS = 16
CLIENTS = 4


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Any]:
    """A Ray cluster of two one-CPU nodes on this machine; this process is a driver of it."""
    import ray
    from ray.cluster_utils import Cluster

    # The dashboard serves Ray's state API; not on its default port, which another Ray
    # instance on this machine may hold.
    head = {"num_cpus": 1, "dashboard_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def service_on_two_nodes(
    two_nodes: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    flags = [
        "--ray",
        "--ray-address",
        two_nodes.address,
        "--ray-explain-replicas",
        "2",
        "--ray-explain-cpus",
        "1",
        "--ray-predict-cpus",
        "0",
    ]
    service = start_service(tmp_path_factory.mktemp("two-nodes"), flags)
    try:
        yield service
    finally:
        stop_ray_service(service, [])  # the cluster is the fixture's: it stops it


def test_explain_replicas_on_both_nodes_answer_requests(
    two_nodes: Any, service_on_two_nodes: Service, celebs_root: Path
):
    import ray
    from ray.util.state import list_actors

    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    replicas = [
        actor
        for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        if actor.class_name.endswith(":Explain")
    ]
    assert len(nodes) == 2
    assert {actor.node_id for actor in replicas} == nodes, replicas

    face = face_png(celebs_root, "gwyneth_paltrow")

    def explain(seed: int) -> tuple[int, str, str]:
        response = httpx.post(
            f"{service_on_two_nodes.url}/occlusion",
            params={"format": "json", "detect": "false", "window": "32", "stride": "16"},
            files={"file": ("f.png", face)},
            headers={"X-API-Key": API_KEY},
            timeout=120,
        )
        label = json.loads(response.content)["label"] if response.status_code == 200 else ""
        return response.status_code, response.headers.get("x-served-by", ""), label

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(explain, range(EXPLANATIONS)))
    elapsed = time.perf_counter() - started
    by_node = Counter(served_by.rsplit("node=", 1)[-1] for _, served_by, _ in answers)
    print(f"\ntwo nodes: {EXPLANATIONS} explanations in {elapsed:.1f} s, by node {dict(by_node)}")

    assert [status for status, _, _ in answers] == [200] * EXPLANATIONS
    assert {label for _, _, label in answers} == {"gwyneth_paltrow"}
    assert set(by_node) == nodes
