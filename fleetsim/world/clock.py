"""The simulated clock: who finishes a round, and when, on one SimPy environment.

Virtual time belongs here alone. A device's round is download -> compute -> upload;
durations come from the cost model (bytes / bandwidth + latency, FLOPs / FLOP rate)
times a seeded log-normal jitter on compute (and thermal throttling). The round ends
when the first `keep` devices have uploaded (over-selection), when every device is
done, or at the deadline, whichever comes first; devices still busy then are
interrupted as stragglers. A device whose availability ends before its upload is done
drops out at that moment: its update is lost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import simpy


@dataclass(frozen=True)
class ClockJob:
    """One device's round as the clock sees it."""

    device_id: int
    download_bytes: int
    upload_bytes: int
    flops: float
    flops_per_s: float
    downlink_bps: float
    uplink_bps: float
    latency_s: float
    compute_jitter: float
    throttle_after_s: float = math.inf
    throttle_factor: float = 1.0
    offline_at_s: float = math.inf  # when the device drops out (simulated time)

    def nominal_durations(self) -> tuple[float, float, float]:
        """(download_s, compute_s, upload_s) without jitter: what a planner can expect."""
        download_s = self.latency_s + 8 * self.download_bytes / self.downlink_bps
        compute_s = self._throttled(self.flops / self.flops_per_s)
        upload_s = self.latency_s + 8 * self.upload_bytes / self.uplink_bps
        return download_s, compute_s, upload_s

    def durations(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """(download_s, compute_s, upload_s); draws one jitter from `rng`."""
        jitter = float(rng.lognormal(0.0, self.compute_jitter)) if self.compute_jitter else 1.0
        download_s, upload_s = self.nominal_durations()[::2]
        return download_s, self._throttled(jitter * self.flops / self.flops_per_s), upload_s

    def _throttled(self, compute_s: float) -> float:
        """Compute time once the device throttles after `throttle_after_s`."""
        hot = max(0.0, compute_s - self.throttle_after_s)
        return compute_s - hot + hot / self.throttle_factor


@dataclass(frozen=True)
class DeviceTiming:
    device_id: int
    download_s: float
    compute_s: float
    upload_s: float
    finished: bool  # uploaded before the round ended and among the first `keep`
    offline: bool = False  # dropped out (went offline) before it could upload

    @property
    def busy_s(self) -> float:
        return self.download_s + self.compute_s + self.upload_s


@dataclass(frozen=True)
class RoundTiming:
    start_s: float
    end_s: float
    devices: tuple[DeviceTiming, ...]  # in the order of the jobs given

    @property
    def finishers(self) -> list[int]:
        return [t.device_id for t in self.devices if t.finished]

    @property
    def finished_devices(self) -> dict[int, DeviceTiming]:
        return {t.device_id: t for t in self.devices if t.finished}


class Clock:
    """Owns the SimPy environment across rounds; time only moves forward."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.env = simpy.Environment(initial_time=start_s)

    @property
    def now_s(self) -> float:
        return float(self.env.now)

    def restore(self, now_s: float) -> None:
        """Go on from a checkpoint's time (between rounds no event is pending)."""
        self.env = simpy.Environment(initial_time=now_s)

    def run_round(self, jobs: Sequence[ClockJob], keep: int, deadline_s: float,
                  rng: np.random.Generator) -> RoundTiming:
        """Simulate one round and advance the clock to its end."""
        env, start = self.env, self.now_s
        planned = [job.durations(rng) for job in jobs]  # drawn in job order: seeded, stable
        finished: list[int] = []
        dropped: set[int] = set()
        enough = env.event()

        def device(job: ClockJob, durations: tuple[float, float, float]):  # type: ignore[no-untyped-def]
            try:
                drop_in = job.offline_at_s - env.now
                if drop_in < sum(durations):  # goes offline before its upload is through
                    yield env.timeout(max(drop_in, 0.0))
                    dropped.add(job.device_id)
                    return
                for duration in durations:
                    yield env.timeout(duration)
            except simpy.Interrupt:
                return
            if len(finished) < keep:
                finished.append(job.device_id)
                if len(finished) == keep and not enough.triggered:
                    enough.succeed()

        procs = [env.process(device(j, d)) for j, d in zip(jobs, planned, strict=True)]
        deadline = env.timeout(deadline_s)
        everyone = env.all_of(procs) if procs else env.timeout(0)
        env.run(until=env.any_of([deadline, enough, everyone]))
        done = set(finished)
        for proc in procs:
            if proc.is_alive:
                proc.interrupt("round over")
        while env.peek() == env.now:  # deliver the interrupts without moving time
            env.step()
        timings = tuple(DeviceTiming(j.device_id, *d, finished=j.device_id in done,
                                     offline=j.device_id in dropped)
                        for j, d in zip(jobs, planned, strict=True))
        return RoundTiming(start_s=start, end_s=self.now_s, devices=timings)
