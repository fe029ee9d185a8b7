"""Where the hosts run: a lean Ray node on this machine, or an existing cluster joined
by address, and a scenario's pool of hosts launched there."""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fleetsim.runtime.workers import HostOptions, LocalPool, Pool, RayPool

if TYPE_CHECKING:
    from fleetsim.config.scenario import Scenario

RLIMIT_HEADROOM_BYTES = 2 << 30  # the RLIMIT_DATA net sits this far above the largest cap
OBJECT_STORE_FRACTION = 0.3  # of the machine's memory, as Ray's own default
RAY_OPTIONS: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                               "logging_level": logging.WARNING}


def launch_hosts(scenario: Scenario) -> Pool:
    """Start a scenario's hosts: one in-process host, or Ray actors (by default one per
    CPU of the cluster; more hosts than CPUs share them rather than wait for one)."""
    from fleetsim.config.scenario import device_profiles
    from fleetsim.types import MIB

    workers = scenario.workers
    largest_cap = max(p.memory_mb for p in device_profiles(scenario)) * MIB
    options = HostOptions(threads=workers.threads_per_host, device=workers.device,
                          rlimit_margin_bytes=int(largest_cap + RLIMIT_HEADROOM_BYTES))
    slow = {f.host: f.delay_s for f in scenario.faults if f.kind == "slow_host"}
    if workers.backend == "local":
        return LocalPool(replace(options, rlimit_margin_bytes=None, delay_s=slow.get(0, 0.0)))
    import ray

    start_ray(workers.address)
    cpus = ray.cluster_resources().get("CPU", 1)
    count = (max(1, int(cpus // workers.threads_per_host)) if workers.count == "auto"
             else workers.count)
    cpus_per_host = min(workers.threads_per_host, cpus / count)
    return RayPool.launch(count, options, cpus_per_host, workers.gpus_per_host, slow)


def start_ray(address: str | None) -> None:
    """Join the Ray cluster at `address`, or start a lean one on this machine: Ray's
    local-cluster helper lets a one-machine run leave out the autoscaler's monitor and
    the log monitor (two Python processes, about 160 MB, that a run with
    log_to_driver=False never uses), and it shuts down in a fraction of a second."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        from ray.cluster_utils import Cluster

        logging.getLogger("ray").setLevel(logging.WARNING)  # not its address-file notice

        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        head = Cluster(initialize_head=True, head_node_args={
            "num_cpus": os.cpu_count() or 1, "include_dashboard": False,
            "include_log_monitor": False, "no_monitor": True,
            "object_store_memory": int(memory * OBJECT_STORE_FRACTION)})
        ray.init(address=head.address, **RAY_OPTIONS)
        atexit.register(_stop_ray, head)  # runs before ray's own exit hook: driver, then node
        return
    ray.init(address=address, **RAY_OPTIONS)


def _stop_ray(head: Any) -> None:
    import ray

    ray.shutdown()
    head.shutdown()
