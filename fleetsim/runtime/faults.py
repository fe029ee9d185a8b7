"""Injected faults, applied around a pool (`FaultyPool`): the engine plans and hosts
train as if nothing were wrong, and a fault does what a real one does. A host crash
strikes the host that trains a listed round's first device (its process dies from
inside, so the job asks it to; Ray restarts it and the job is lost, `failed`); a
corrupted upload cuts an update short in transit, between the host and the server, where
its checksum catches it (`failed`, dropped). Which jobs are struck depends on the run's
seed, the round and the device only. Slow hosts are a property of the host
(`HostOptions.delay_s`), not of a job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fleetsim.config.scenario import Scenario
from fleetsim.runtime.workers import Job, JobResult, Pool, corrupted, verified
from fleetsim.types import TrainingPlan

FAULT_STREAM = 6  # the random stream of corrupted uploads (see session.stream)
JOB_FAULTS = ("host_crash", "corrupt_upload")


def injected_fault(scenario: Scenario, r: int, device_id: int, first: bool) -> str:
    """The fault the scenario injects into this job: "crash", "corrupt" or ""; a
    corrupted upload strikes listed rounds, or each job with its probability (drawn from
    the job's own stream)."""
    from fleetsim.runtime.session import seed_of

    for fault in scenario.faults:
        if fault.kind == "host_crash" and first and r in fault.rounds:
            return "crash"
        if fault.kind == "corrupt_upload" and (r in fault.rounds or fault.probability > 0 and
                                               np.random.default_rng(seed_of(
                                                   scenario.seed, FAULT_STREAM, r, device_id)
                                               ).random() < fault.probability):
            return "corrupt"
    return ""


def with_faults(pool: Pool, scenario: Scenario) -> Pool:
    """The pool, wrapped when the scenario injects faults into jobs."""
    if any(f.kind in JOB_FAULTS for f in scenario.faults):
        return FaultyPool(pool, scenario)
    return pool


class FaultyPool:
    """A pool whose jobs meet the scenario's faults (see the module's docstring)."""

    def __init__(self, pool: Pool, scenario: Scenario) -> None:
        self.pool, self.scenario = pool, scenario

    @property
    def hosts(self) -> list[Any]:
        return self.pool.hosts

    async def train_all(self, jobs: Sequence[Job], shared_state: Any) -> list[JobResult]:
        """The jobs (sorted by device id: the first is the round's first device), the
        crash asked of its host, each corrupted upload cut on its way back."""
        faults = {job.device_id: injected_fault(self.scenario, job.round, job.device_id,
                                                first=i == 0) for i, job in enumerate(jobs)}
        sent = [replace(job, fault="crash") if faults[job.device_id] == "crash" else job
                for job in jobs]
        results = await self.pool.train_all(sent, shared_state)
        return [verified(replace(res, update=corrupted(res.update)))
                if faults[res.device_id] == "corrupt" and res.update is not None else res
                for res in results]

    async def load(self, model_config: Any, train_windows: Sequence[np.ndarray]) -> None:
        await self.pool.load(model_config, train_windows)

    def share(self, value: Any) -> Any:
        return self.pool.share(value)

    def share_parts(self, windows: np.ndarray, parts: int) -> list[Any]:
        return self.pool.share_parts(windows, parts)

    async def evaluate(self, shared_state: Any, parts: Sequence[Any], plan: TrainingPlan
                       ) -> dict[str, Any]:
        return await self.pool.evaluate(shared_state, parts, plan)

    def close(self) -> None:
        self.pool.close()
