"""``--engine ray`` on a cluster of two Ray nodes, joined by address as ``RAY_ADDRESS`` says.

``ray.cluster_utils.Cluster`` starts a head node and a worker node on this machine: two
raylets, each with its own object store and worker processes, as ``ray start --head`` and
``ray start --address`` would on two machines. The head offers no CPU (as on a cluster whose
head only schedules), so every measure task must run on the other node and its results cross
between object stores to reach the driver. The scan joins the cluster by ``RAY_ADDRESS`` and
must write what the local engine writes, byte for byte, with nothing left to the driver.

Its own module: the cluster's shutdown resets Ray's process-wide state, which the one-node
instance of ``test_ray_engine.py`` must not share.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_ray_engine import _engines_agree, _need_ray

from auditor.demo.build import make_coco


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """The demo's COCO detection dataset (every box defect)."""
    root = tmp_path_factory.mktemp("ray-cluster") / "coco"
    make_coco(root)
    return root


@pytest.fixture(scope="module")
def two_nodes():
    _need_ray()
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    assert not ray.is_initialized()  # each scan left the cluster it joined
    cluster.shutdown()


def test_a_scan_joined_by_address_runs_on_the_worker_node_and_writes_the_local_report(
    two_nodes, coco, tmp_path, monkeypatch
):
    import ray

    assert len(two_nodes.list_all_nodes()) == 2
    assert not ray.is_initialized()  # this process is not connected: the scan itself joins by address
    monkeypatch.setenv("RAY_ADDRESS", two_nodes.address)
    _engines_agree(coco, tmp_path, "--no-embed")
    assert not ray.is_initialized()  # and leaves the cluster when it is done
    # It ran as a job of this cluster (not a local instance of its own): its driver is this process.
    ray.init(address=two_nodes.address, log_to_driver=False, configure_logging=False)
    try:
        from ray._private.state import jobs  # no public listing without the dashboard

        scans = [job for job in jobs() if job["DriverPid"] == os.getpid() and job["IsDead"]]
    finally:
        ray.shutdown()
    assert len(scans) == 1
