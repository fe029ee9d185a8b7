"""The asynchronous clock (FedBuff): no round barrier, one SimPy environment.

Up to `concurrency` devices train at once. Each starts from the newest global version
when it is dispatched and ends when its upload arrives, when it goes offline (lost), or
`deadline_s` after its dispatch (a straggler, abandoned). An arrival `tau` server steps
old (tau = the version now - its start version) enters the buffer unless tau exceeds
`max_staleness` (then it is dropped, `stale`); every `buffer_size` arrivals the server
steps to the next version. A freed slot is filled at once; when no device can be sent,
the server tries again `wait_s` later. The engine decides who goes and with what plan
(`dispatch`); this module decides only when things happen, so the same inputs give the
same steps, whatever executes them.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import simpy

from fleetsim.config.scenario import FedBuffConfig
from fleetsim.errors import FleetsimError

Ending = Literal["arrived", "stale", "offline", "straggler"]
IDLE_LIMIT_S = 7 * 24 * 3600.0  # nothing in flight and nobody to send this long: give up


@dataclass(frozen=True)
class Dispatch:
    """A device the engine sends out: its durations (from the cost model, jitter drawn)
    and when it goes offline; `payload` (its plan) is the engine's and passes through."""

    device_id: int
    download_s: float
    compute_s: float
    upload_s: float
    offline_at_s: float
    payload: Any = None

    @property
    def busy_s(self) -> float:
        return self.download_s + self.compute_s + self.upload_s


@dataclass(frozen=True)
class AsyncJob:
    """One device's job as the clock decided it."""

    number: int  # dispatch order, from 0
    dispatch: Dispatch
    dispatch_s: float
    start_version: int
    end_s: float
    ending: Ending
    staleness: int | None = None  # server steps between its start and its arrival


@dataclass(frozen=True)
class ServerStep:
    """The server's step to `version`: the buffered arrivals it applies, in arrival
    order, and the jobs that ended without entering the buffer since the last step."""

    version: int  # the version this step makes: 1, 2, ...
    time_s: float
    start_s: float  # when the previous step was made
    arrived: tuple[AsyncJob, ...]
    lost: tuple[AsyncJob, ...]
    in_flight: int  # jobs still training when the step is made (before freed slots refill)


DispatchFn = Callable[[float, int, int, frozenset[int]], list[Dispatch]]


class AsyncTimeline:
    """The FedBuff timeline, stepped one server step at a time (`next_step`).

    `dispatch(now_s, count, version, busy)` returns up to `count` devices to send out
    now, none of them in `busy` (the devices training)."""

    def __init__(self, config: FedBuffConfig, deadline_s: float, dispatch: DispatchFn,
                 start_s: float = 0.0) -> None:
        self.config, self.deadline_s, self.dispatch = config, deadline_s, dispatch
        self.env = simpy.Environment(initial_time=start_s)
        self.version, self.jobs_sent = 0, 0
        self.in_flight: dict[int, AsyncJob] = {}  # by device id
        self.starts: Counter[int] = Counter()  # the versions jobs in flight start from
        self.buffer: list[AsyncJob] = []
        self.lost: list[AsyncJob] = []
        self.steps: deque[ServerStep] = deque()
        self.ended: simpy.Store = simpy.Store(self.env)
        self.last_step_s = start_s
        self.env.process(self._server())

    @property
    def now_s(self) -> float:
        return float(self.env.now)

    def next_step(self) -> ServerStep:
        """Simulate until the server makes its next version."""
        while not self.steps:
            self.env.step()
        return self.steps.popleft()

    def _server(self):  # type: ignore[no-untyped-def]
        idle_since = self.now_s
        while True:
            self._fill()
            if self.in_flight:
                idle_since = self.now_s
            elif self.now_s - idle_since > IDLE_LIMIT_S:
                raise FleetsimError(f"no device could be dispatched for {IDLE_LIMIT_S:.0f} "
                                    f"simulated seconds (from {idle_since:.0f} s)")
            get = self.ended.get()
            if len(self.in_flight) < self.config.concurrency:  # try again later
                yield get | self.env.timeout(self.config.wait_s)
                if not get.triggered:
                    get.cancel()
                    continue
            else:
                yield get
            self._end(get.value)

    def _fill(self) -> None:
        """Send out devices for every free slot (as many as the engine gives)."""
        free = self.config.concurrency - len(self.in_flight)
        if free <= 0:
            return
        busy = frozenset(self.in_flight)
        for sent in self.dispatch(self.now_s, free, self.version, busy)[:free]:
            if sent.device_id in self.in_flight:
                raise FleetsimError(f"device {sent.device_id} dispatched while training")
            job = AsyncJob(self.jobs_sent, sent, self.now_s, self.version, 0.0, "arrived")
            self.jobs_sent += 1
            self.in_flight[sent.device_id] = job
            self.starts[self.version] += 1
            self.env.process(self._device(job))

    def _device(self, job: AsyncJob):  # type: ignore[no-untyped-def]
        """Train, then end the first way the clock allows: arrive, drop out, time out."""
        sent = job.dispatch
        endings: list[tuple[float, Ending]] = [
            (sent.busy_s, "arrived"), (sent.offline_at_s - self.now_s, "offline"),
            (self.deadline_s, "straggler")]
        wait, ending = min(endings, key=lambda e: e[0])  # ties: the first listed wins
        yield self.env.timeout(max(wait, 0.0))
        yield self.ended.put((job, ending))

    def _end(self, ended: tuple[AsyncJob, Ending]) -> None:
        job, ending = ended
        del self.in_flight[job.dispatch.device_id]
        self.starts[job.start_version] -= 1
        if not self.starts[job.start_version]:
            del self.starts[job.start_version]
        staleness = self.version - job.start_version
        limit = self.config.max_staleness
        if ending == "arrived" and limit is not None and staleness > limit:
            ending = "stale"
        done = AsyncJob(job.number, job.dispatch, job.dispatch_s, job.start_version,
                        self.now_s, ending, staleness if ending in ("arrived", "stale")
                        else None)
        if ending != "arrived":
            self.lost.append(done)
            return
        self.buffer.append(done)
        if len(self.buffer) == self.config.buffer_size:
            self.version += 1
            self.steps.append(ServerStep(self.version, self.now_s, self.last_step_s,
                                         tuple(self.buffer), tuple(self.lost),
                                         len(self.in_flight)))
            self.buffer, self.lost, self.last_step_s = [], [], self.now_s
