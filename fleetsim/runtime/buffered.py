"""Asynchronous mode (FedBuff): server steps instead of rounds, still "simulate, then
execute".

The clock (`fleetsim.world.dispatch`) decides who is sent out when, from which version,
and which arrivals make each server step; planning happens there, at dispatch, from the
device's constraints at that instant. Execution follows as a dependency graph: a job
trains as soon as the version it starts from exists (the simulation runs a few steps
ahead, so hosts stay busy across steps), and step s waits for its own updates only.
Updates are rebased onto the newest version, weighted by staleness and the server
learning rate, and applied with the policy's aggregation. Results never depend on
which host finished first.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np

from fleetsim.errors import FleetsimError
from fleetsim.policy import clock_job
from fleetsim.runtime.aggregate import rebased, staleness_weight
from fleetsim.runtime.checkpoint import Checkpoint, output_offsets, save_checkpoint
from fleetsim.runtime.engine import (
    checked_plans,
    describe_plan,
    evaluate,
    killed_at,
    policy_state,
)
from fleetsim.runtime.session import JOB_STREAMS, Run, seed_of, stream, training_defaults
from fleetsim.runtime.workers import Job, JobResult
from fleetsim.types import (
    DeviceState,
    Evaluation,
    JobRecord,
    ModelState,
    RoundContext,
    Status,
    StepRecord,
    TrainingPlan,
)
from fleetsim.world.clock import ClockJob
from fleetsim.world.dispatch import AsyncJob, AsyncTimeline, Dispatch, ServerStep

DISPATCH_STREAMS = 8  # one stream per dispatch call: selection, planning, jitter
AGGREGATE_STREAM = 9  # the policy's generator when it aggregates step s
ASYNC_JOBS = 1 << 20  # job seeds: (JOB_STREAMS, ASYNC_JOBS + job number, device)


class Planned(NamedTuple):
    """What the engine sends out with a device (a dispatch's payload)."""

    plan: TrainingPlan
    cap: int  # the smallest memory the device has while it trains
    clock_job: ClockJob
    device: DeviceState  # as it was when sent


class Dispatcher:
    """The engine's side of a dispatch: pick free online devices, plan them with the
    policy (constraints as of now), draw their durations. Devices the policy leaves out
    are kept as `skipped`, by the version they were planned at."""

    def __init__(self, run: Run) -> None:
        self.run, self.calls = run, 0
        self.skipped: dict[int, list[JobRecord]] = defaultdict(list)

    def __call__(self, now_s: float, count: int, version: int,
                 busy: frozenset[int]) -> list[Dispatch]:
        run, scenario = self.run, self.run.scenario
        select_rng, policy_rng, clock_rng = (np.random.default_rng(s) for s in stream(
            scenario.seed, DISPATCH_STREAMS, self.calls).spawn(3))
        self.calls += 1
        run.fleet.advance(now_s)
        online = run.fleet.online(now_s)
        training = np.zeros(len(run.fleet), bool)
        training[list(busy)] = True
        free = online[~training[online]]
        if not len(free):
            return []
        picked = sorted(int(d) for d in select_rng.choice(free, min(count, len(free)),
                                                          replace=False))
        devices = tuple(run.fleet.state(d, now_s) for d in picked)
        defaults = training_defaults(scenario, version)
        ctx = RoundContext(version, scenario.rounds, now_s, devices, run.model, defaults,
                           scenario.selection.deadline_s, None, policy_rng)
        plans = checked_plans(ctx, run.policy.plan_round(ctx))
        sent = []
        for device in devices:
            d = device.device_id
            if d not in plans:
                self.skipped[version].append(skipped_record(device, version, now_s))
                continue
            job = replace(clock_job(run.model.config, plans[d], device, defaults.seq_len),
                          offline_at_s=run.fleet.offline_at(d, now_s))
            durations = job.durations(clock_rng)
            cap = run.fleet.memory_during(d, now_s, now_s + sum(durations))
            sent.append(Dispatch(d, *durations, job.offline_at_s,
                                 payload=Planned(plans[d], cap, job, device)))
        return sent


def skipped_record(device: Any, version: int, now_s: float) -> JobRecord:
    return JobRecord(device.device_id, device.device_class, version, "-", "skipped", 0,
                     device.memory_bytes, 0.0, 0.0, 0.0, 0.0, 0, 0, "", dispatch_s=now_s,
                     end_s=now_s, start_version=version)


class Executor:
    """Trains the clock's jobs as soon as their start versions exist."""

    def __init__(self, run: Run, versions: dict[int, ModelState]) -> None:
        self.run = run
        self.versions: dict[int, asyncio.Future[ModelState]] = {}
        self.shared: dict[int, Any] = {}
        self.tasks: dict[int, asyncio.Task[JobResult]] = {}
        for v, state in versions.items():
            self.version(v).set_result(state)

    def version(self, v: int) -> asyncio.Future[ModelState]:
        if v not in self.versions:
            self.versions[v] = asyncio.get_running_loop().create_future()
        return self.versions[v]

    def launch(self, job: AsyncJob, step: int) -> None:
        if job.ending == "arrived":
            self.tasks[job.number] = asyncio.create_task(self._train(job, step))

    async def _train(self, job: AsyncJob, step: int) -> JobResult:
        state = await self.version(job.start_version)
        if job.start_version not in self.shared:
            self.shared[job.start_version] = self.run.pool.share(state)
        planned = job.dispatch.payload
        seed = seed_of(self.run.scenario.seed, JOB_STREAMS, ASYNC_JOBS + job.number,
                       job.dispatch.device_id)
        [result] = await self.run.pool.train_all(
            [Job(job.dispatch.device_id, step, planned.plan, seed, planned.cap)],
            self.shared[job.start_version])
        return result

    def forget(self, keep: set[int]) -> None:
        """Drop the versions no job still needs."""
        for v in [v for v in self.versions if v not in keep]:
            del self.versions[v]
            self.shared.pop(v, None)


class AsyncPlay:
    """Plays server steps in order; the timeline runs ahead by `lookahead` steps."""

    def __init__(self, run: Run, state: ModelState, first_step: int,
                 older: dict[int, ModelState]) -> None:
        fedbuff = run.scenario.selection.fedbuff
        self.run, self.fedbuff = run, fedbuff
        self.dispatcher = Dispatcher(run)
        self.timeline = AsyncTimeline(fedbuff, run.scenario.selection.deadline_s,
                                      self.dispatcher)
        self.executor = Executor(run, {**older, first_step: state})
        self.ahead: deque[tuple[int, ServerStep]] = deque()
        self.simulated = 0
        self.lookahead = math.ceil(fedbuff.concurrency / fedbuff.buffer_size) + 1
        self.in_flight_versions: dict[int, set[int]] = {}
        self.online: dict[int, dict[str, int]] = {}
        while self.simulated < first_step:  # a resumed run: replay the clock, train nothing
            self._simulate(launch=False)
        for v in [v for v in self.dispatcher.skipped if v < first_step]:
            del self.dispatcher.skipped[v]
        missing = self.in_flight_versions.get(first_step - 1, set()) - {first_step, *older}
        if missing:
            raise FleetsimError(f"the checkpoint lacks versions {sorted(missing)} that jobs "
                                "in flight start from")

    def _simulate(self, launch: bool = True) -> None:
        step = self.timeline.next_step()
        s = self.simulated
        self.simulated += 1
        self.in_flight_versions[s] = set(self.timeline.starts)
        fleet = self.run.fleet
        self.online[s] = fleet.count_by_class(fleet.online(step.time_s))
        if launch:
            for job in step.arrived:
                self.executor.launch(job, s)
            self.ahead.append((s, step))

    async def step(self, s: int, state: ModelState
                   ) -> tuple[ServerStep, list[JobResult], ModelState, bool]:
        """Server step `s` on `state` (version s): the step, its results, version s + 1
        and whether the updates were applied."""
        while self.simulated < min(s + self.lookahead, self.run.scenario.rounds) \
                or not self.ahead:
            self._simulate()
        index, step = self.ahead.popleft()
        assert index == s, (index, s)
        results = [await self.executor.tasks.pop(job.number) for job in step.arrived]
        state, applied = self._aggregate(s, step, state, results)
        self.executor.version(s + 1).set_result(state)
        launched = {j.start_version for _, later in self.ahead for j in later.arrived}
        self.executor.forget({s + 1, *self.in_flight_versions[s], *launched})
        self.in_flight_versions.pop(s - 1, None)
        return step, results, state, applied

    def _aggregate(self, s: int, step: ServerStep, state: ModelState,
                   results: Sequence[JobResult]) -> tuple[ModelState, bool]:
        ok = [(job, res) for job, res in zip(step.arrived, results, strict=True)
              if res.update is not None]
        if len(ok) < self.run.scenario.selection.min_updates:
            return state, False
        updates = []
        for job, res in sorted(ok, key=lambda pair: pair[1].device_id):
            start = self.executor.version(job.start_version).result()
            factor = self.fedbuff.server_lr * staleness_weight(self.fedbuff.staleness,
                                                               job.staleness or 0)
            updates.append(rebased(res.update, start, state, factor))  # type: ignore[arg-type]
        scenario = self.run.scenario
        ctx = RoundContext(s, scenario.rounds, step.time_s,
                           tuple(job.dispatch.payload.device for job, _ in ok), self.run.model,
                           training_defaults(scenario, s), scenario.selection.deadline_s, None,
                           np.random.default_rng(stream(scenario.seed, AGGREGATE_STREAM, s)))
        return self.run.policy.aggregate(ctx, state, updates), True

    def versions_in_flight(self, s: int) -> set[int]:
        """The older versions jobs in flight after step `s` start from (a checkpoint
        keeps them)."""
        return self.in_flight_versions[s] - {s + 1}


def job_records(step: ServerStep, results: Sequence[JobResult], s: int,
                skipped: Sequence[JobRecord]) -> list[JobRecord]:
    """Every job that ended in step `s` (applied, dropped, lost) and every device the
    policy left out, in the order they ended."""
    by_number = {job.number: res for job, res in zip(step.arrived, results, strict=True)}
    records = list(skipped)
    for job in sorted((*step.arrived, *step.lost), key=lambda j: (j.end_s, j.number)):
        res = by_number.get(job.number)
        plan, cap, clock, device = job.dispatch.payload

        status: Status = res.status if res else cast(Status, job.ending)  # never "arrived"
        records.append(JobRecord(
            device_id=job.dispatch.device_id, device_class=device.device_class, round=s,
            plan=describe_plan(plan), status=status,
            peak_mem_bytes=res.peak_mem_bytes if res else 0, mem_cap_bytes=cap,
            flops=res.flops if res else clock.flops, compute_s=job.dispatch.compute_s,
            download_s=job.dispatch.download_s, upload_s=job.dispatch.upload_s,
            bytes_up=clock.upload_bytes if res and res.status == "ok" else 0,
            bytes_down=clock.download_bytes, host=res.host if res else "",
            loss=res.loss if res else None, error=res.error if res else "",
            dispatch_s=job.dispatch_s, end_s=job.end_s, start_version=job.start_version,
            staleness=job.staleness))
    return records


def step_record(s: int, step: ServerStep, wall_s: float, evaluation: Evaluation | None,
                jobs: Sequence[JobRecord], applied: bool, online: dict[str, int]) -> StepRecord:
    status = Counter(j.status for j in jobs)
    ok = [j for j in jobs if j.status == "ok"]
    staleness = [j.staleness for j in ok if j.staleness is not None]
    losses = [(j.loss, j.device_id) for j in ok if j.loss is not None]
    return StepRecord(
        round=s, sim_time_s=step.time_s, round_time_s=step.time_s - step.start_s,
        wall_time_s=wall_s, accuracy=evaluation.accuracy if evaluation else None,
        loss=evaluation.loss if evaluation else None,
        train_loss=float(np.mean([loss for loss, _ in losses])) if losses else None,
        selected=len(jobs), completed=status["ok"], stragglers=status["straggler"],
        offline=status["offline"], oom=status["oom"], failed=status["failed"],
        skipped=status["skipped"], bytes_up=sum(j.bytes_up for j in jobs),
        bytes_down=sum(j.bytes_down for j in jobs), aggregated=applied,
        online=sum(online.values()), online_by_class=online, stale=status["stale"],
        staleness_mean=float(np.mean(staleness)) if staleness else None,
        staleness_max=max(staleness) if staleness else None, in_flight=step.in_flight)


async def play_async(run: Run, out_dir: Path, state: ModelState, initial: Evaluation,
                     records: list[Any], older: dict[int, ModelState]) -> ModelState:
    """Every server step from len(records) on (a resumed run brings the older versions
    its jobs in flight start from); appends to `records`, returns the last version."""
    play = AsyncPlay(run, state, len(records), older)
    for s in range(len(records), run.scenario.rounds):
        wall_start = time.perf_counter()
        step, results, state, applied = await play.step(s, state)
        due = s == run.scenario.rounds - 1 or (s + 1) % run.scenario.eval.every == 0
        evaluation = await evaluate(run, state, s) if due else None
        jobs = job_records(step, results, s, play.dispatcher.skipped.pop(s, []))
        record = step_record(s, step, time.perf_counter() - wall_start, evaluation, jobs,
                             applied, play.online.pop(s))
        run.writer.write_round(record, jobs)
        run.observer.on_round(record, jobs)
        records.append(record)
        killed_at(s, "records")
        older = {v: play.executor.version(v).result() for v in play.versions_in_flight(s)}
        save_checkpoint(out_dir, Checkpoint(s, state, policy_state(run.policy), step.time_s,
                                            None, asdict(initial), output_offsets(out_dir),
                                            older))
        killed_at(s, "checkpoint")
    return state
