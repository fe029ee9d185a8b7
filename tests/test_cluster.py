"""Scale-out: the smoke scenario on an existing two-node Ray cluster (made on this
machine with ray.cluster_utils.Cluster), joined by address, gives the same rounds as the
in-process backend, with hosts on both nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleetsim.views.metrics import read_jsonl
from tests.conftest import SMOKE
from tests.test_resume import without_wall_time

pytestmark = [pytest.mark.slow, pytest.mark.ray]

CLUSTER_RUN = """
import sys
import ray
from ray.cluster_utils import Cluster
from fleetsim.cli import main

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
code = main(["run", sys.argv[1], "--out", sys.argv[2], "--no-live",
             "--set", f"workers.address={cluster.address}", "--set", "workers.count=auto"])
ray.shutdown()  # the driver leaves before its cluster goes
cluster.shutdown()
sys.exit(code)
"""


def test_smoke_on_a_two_node_cluster_matches_in_process(tmp_path: Path) -> None:
    cluster_out, local_out = tmp_path / "cluster", tmp_path / "local"
    done = subprocess.run([sys.executable, "-c", CLUSTER_RUN, str(SMOKE), str(cluster_out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    local = subprocess.run([sys.executable, "-m", "fleetsim", "run", str(SMOKE), "--no-live",
                            "--out", str(local_out), "--set", "workers.backend=local"],
                           capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    assert without_wall_time(read_jsonl(cluster_out / "rounds.jsonl")) == \
        without_wall_time(read_jsonl(local_out / "rounds.jsonl"))
    hosts = {tuple(d["host"].split("/")[1::2]) for d in read_jsonl(cluster_out / "devices.jsonl")
             if d["host"]}  # stragglers ran nowhere
    assert {h for h, _ in hosts} == {"host0", "host1"}  # one host per CPU of the cluster
    assert len({node for _, node in hosts}) == 2, hosts  # one on each node
