"""Device hosts: processes that emulate one device at a time, and the pool that feeds them.

A `DeviceHost` keeps its model and the fleet's data across jobs (built once per host,
not per device); a job brings the device's plan, caps and seed, and the round's global
weights, which Ray puts in the object store once per round and hands to every host
zero-copy. Results never depend on which host ran a job: batches are drawn from a
seed of (run seed, round, device), and each host trains on a fixed number of threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from fleetsim.types import LoraSpec, ModelState, Slices, Status, TrainingPlan, Update

log = logging.getLogger(__name__)
HOST_RESTARTS = 100  # a host process that dies is started again, this many times at most
REVIVE_TRIES, REVIVE_WAIT_S = 300, 0.2  # how long the pool waits for a restarted host


@dataclass(frozen=True)
class Job:
    device_id: int
    round: int
    plan: TrainingPlan
    seed: int
    mem_cap_bytes: int
    fault: str = ""  # "crash": the host process dies mid-job (fleetsim.runtime.faults injects it)


@dataclass(frozen=True)
class JobResult:
    device_id: int
    status: Status
    update: Update | None
    loss: float | None
    peak_mem_bytes: int
    flops: float
    host: str
    error: str = ""


@dataclass(frozen=True)
class HostOptions:
    threads: int = 1  # torch threads per host: fixed, so results do not depend on the pool
    device: str = "cpu"  # "cuda": train on the GPU under a per-process memory fraction
    rlimit_margin_bytes: int | None = None  # RLIMIT_DATA safety net (Ray hosts only)
    delay_s: float = 0.0  # injected slowness per job (wall time only)
    in_actor: bool = False  # a crash may kill the process (never the driver's)


class DeviceHost:
    """Emulates devices one at a time, each under its memory cap; used in-process or
    inside a Ray actor. Models (one per plan shape: sub-model widths, LoRA rank) and the
    fleet's data are built once per host and reused."""

    def __init__(self, host_id: str, model_config: Any, train_windows: Sequence[np.ndarray],
                 options: HostOptions = HostOptions()) -> None:
        import torch

        from fleetsim.device.memory import limit_process_data

        torch.set_num_threads(options.threads)
        self.host = f"{socket.gethostname()}/{host_id}/pid{os.getpid()}"
        self.device = torch.device(options.device)
        self.config, self.options = model_config, options
        self.flops_per_step: dict[Any, float] = {}
        self.models: dict[tuple[LoraSpec | None, Slices], Any] = {}
        self.train_windows = train_windows
        if options.rlimit_margin_bytes is not None:
            limit_process_data(options.rlimit_margin_bytes)

    def model_for(self, plan: TrainingPlan, state: ModelState) -> Any:
        """The host's model of the plan's shape, loaded with its part of `state`."""
        from fleetsim.device.submodel import shape_of
        from fleetsim.device.training import load_state, model_for_plan

        shape = (plan.lora, shape_of(plan.slices))
        if shape not in self.models:
            self.models[shape] = model_for_plan(self.config, plan).to(self.device)  # type: ignore[arg-type]
        model = self.models[shape]
        load_state(model, state, plan)
        return model

    def train(self, job: Job, state: ModelState) -> JobResult:
        from fleetsim.device.training import export_update
        from fleetsim.errors import DeviceOOM

        model = self.model_for(job.plan, state)
        windows = self.train_windows[job.device_id]
        model.zero_grad(set_to_none=True)  # nothing of the previous device stays
        time.sleep(self.options.delay_s)
        try:
            if job.fault == "crash":
                self._crash()
            loss, flops, peak = self._train_capped(model, job, windows)
        except DeviceOOM as oom:  # the device ran out of memory: its update is lost
            return JobResult(job.device_id, "oom", None, None, oom.requested_bytes, 0.0,
                             self.host, str(oom))
        except Exception as err:  # a device that crashes loses its update, the run goes on
            log.exception("device %d failed on %s", job.device_id, self.host)
            return JobResult(job.device_id, "failed", None, None, 0, 0.0, self.host, repr(err))
        tensors, index = export_update(model, job.plan)
        update = Update(job.device_id, float(len(windows)), tensors, index, checksum(tensors))
        return JobResult(job.device_id, "ok", update, loss, peak, flops, self.host)

    def _crash(self) -> None:
        """An injected host crash: the process dies (Ray starts it again); in the
        driver's own process the job fails instead."""
        if self.options.in_actor:
            log.warning("injected crash: host %s exits", self.host)
            os._exit(17)
        raise RuntimeError("injected host crash (in-process host: the job fails)")

    def _train_capped(self, model: Any, job: Job, windows: np.ndarray
                      ) -> tuple[float, float, int]:
        """Train under the device's cap: on CPU the exact MemoryMeter, on CUDA the
        allocator's limit. Returns (loss, FLOPs, peak bytes); raises DeviceOOM."""
        from fleetsim.device.cost import plan_shape
        from fleetsim.device.memory import CudaMemoryCap, MemoryMeter
        from fleetsim.device.training import train_local

        # a shape's FLOPs are counted the first time this host trains it, then known
        shape = (plan_shape(job.plan), windows.shape[1])
        known = self.flops_per_step.get(shape)
        if self.device.type == "cuda":
            with CudaMemoryCap(job.mem_cap_bytes, self.device) as cap:
                loss, flops = train_local(model, job.plan, windows, job.seed,
                                          flops_per_step=known)
            peak = cap.peak_bytes
        else:
            meter = MemoryMeter(job.mem_cap_bytes, resident=model.state_dict().values())
            loss, flops = train_local(model, job.plan, windows, job.seed, meter=meter,
                                      flops_per_step=known)
            peak = meter.peak_bytes
        self.flops_per_step[shape] = flops / job.plan.local_steps
        return loss, flops, peak

    def evaluate(self, state: ModelState, windows: np.ndarray, plan: TrainingPlan
                 ) -> dict[str, float]:
        """The model the plan describes (the policy's evaluated model), from `state`."""
        from fleetsim.device.training import evaluate

        return dict(evaluate(self.model_for(plan, state), windows))


def checksum(tensors: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()


def corrupted(update: Update) -> Update:
    """The update as a flaky link delivers it: one tensor cut to half (a partial upload)."""
    name = sorted(update.tensors)[0]
    cut = dict(update.tensors)
    cut[name] = cut[name].reshape(-1)[: cut[name].size // 2].copy()
    return replace(update, tensors=cut)


def verified(result: JobResult) -> JobResult:
    """The result as the server accepts it: an update whose checksum does not match what
    arrived is dropped and the job recorded `failed`."""
    if result.update is None or checksum(result.update.tensors) == result.update.checksum:
        return result
    return replace(result, status="failed", update=None,
                   error="upload corrupted in transit (checksum mismatch): dropped")


class AsyncDeviceHost:
    """The Ray actor: an async front for a DeviceHost. Training runs in a worker thread,
    so the actor's event loop stays free to answer while a device trains.

    The actor starts before the driver knows the model and data (`load` brings them),
    so its imports overlap the driver's loading; the pool loads a restarted actor again."""

    def __init__(self, host_id: str, options: HostOptions) -> None:
        import ray

        import fleetsim.device.training  # noqa: F401  (torch, transformers: seconds, spent now)

        self.host_id, self.options = host_id, options
        self.node = ray.get_runtime_context().get_node_id()
        self.host: DeviceHost | None = None

    async def load(self, model_config: Any, train_windows: Sequence[np.ndarray]) -> None:
        self.host = DeviceHost(self.host_id, model_config, train_windows, self.options)
        self.host.host += f"/node-{self.node[:8]}"  # which machine of a cluster ran a job

    async def train(self, job: Job, state: ModelState) -> JobResult:
        assert self.host is not None, "the pool loads a host before it sends jobs"
        return await asyncio.to_thread(self.host.train, job, state)

    async def evaluate(self, state: ModelState, windows: np.ndarray, plan: TrainingPlan
                       ) -> dict[str, float]:
        assert self.host is not None, "the pool loads a host before it sends jobs"
        return await asyncio.to_thread(self.host.evaluate, state, windows, plan)


class Pool(Protocol):
    """What the engine asks of the hosts, whatever runs them."""

    @property
    def hosts(self) -> list[Any]: ...

    async def load(self, model_config: Any, train_windows: Sequence[np.ndarray]) -> None: ...
    def share(self, value: Any) -> Any: ...
    def share_parts(self, windows: np.ndarray, parts: int) -> list[Any]: ...
    async def train_all(self, jobs: Sequence[Job], shared_state: Any) -> list[JobResult]: ...
    async def evaluate(self, shared_state: Any, parts: Sequence[Any], plan: TrainingPlan
                       ) -> dict[str, Any]: ...
    def close(self) -> None: ...


class QueuePool:
    """What the in-process and the Ray pools share: hosts join an idle queue once they
    are loaded; each job, and each part of an evaluation, goes to the first idle host."""

    def __init__(self, options: HostOptions) -> None:
        self.options = options
        self.hosts: list[Any] = []
        self.idle: asyncio.Queue[Any] = asyncio.Queue()

    async def train_all(self, jobs: Sequence[Job], shared_state: Any) -> list[JobResult]:
        """Run every job on the first idle host; results sorted by device id."""
        results = await asyncio.gather(*(self._run(job, shared_state) for job in jobs))
        return sorted(results, key=lambda r: r.device_id)

    async def evaluate(self, shared_state: Any, parts: Sequence[Any], plan: TrainingPlan
                       ) -> dict[str, float]:
        """Accuracy and loss of the plan's model over every part, the parts spread over
        the idle hosts and summed in order."""
        from fleetsim.device.training import accuracy_and_loss

        async def one(part: Any) -> dict[str, float]:
            async with self._borrow() as host:
                return await self._evaluate_on(host, shared_state, part, plan)

        return accuracy_and_loss(await asyncio.gather(*(one(p) for p in parts)))

    @asynccontextmanager
    async def _borrow(self) -> AsyncIterator[Any]:
        """The first idle host, for one call; it goes back to the queue afterwards."""
        host = await self.idle.get()
        try:
            yield host
        finally:
            self.idle.put_nowait(host)

    async def _run(self, job: Job, shared_state: Any) -> JobResult:
        raise NotImplementedError

    async def _evaluate_on(self, host: Any, shared_state: Any, part: Any, plan: TrainingPlan
                           ) -> dict[str, float]:
        raise NotImplementedError


class LocalPool(QueuePool):
    """One host in the driver's own process (never memory-limited by RLIMIT_DATA: the
    driver is not a device): for tests, debugging and one process per run. The host sets
    the process's torch threads; closing the pool gives the caller its own back."""

    callers_threads: int | None = None

    async def load(self, model_config: Any, train_windows: Sequence[np.ndarray]) -> None:
        import torch

        self.callers_threads = torch.get_num_threads()
        self.hosts = [DeviceHost("local", model_config, train_windows, self.options)]
        self.idle.put_nowait(self.hosts[0])

    def share(self, value: Any) -> Any:
        return value

    def share_parts(self, windows: np.ndarray, parts: int) -> list[Any]:
        return chunks(windows, parts)

    async def _run(self, job: Job, shared_state: Any) -> JobResult:
        async with self._borrow() as host:
            return verified(await asyncio.to_thread(host.train, job, shared_state))

    async def _evaluate_on(self, host: Any, shared_state: Any, part: Any, plan: TrainingPlan
                           ) -> dict[str, float]:
        return await asyncio.to_thread(host.evaluate, shared_state, part, plan)

    def close(self) -> None:
        if self.callers_threads is not None:
            import torch

            torch.set_num_threads(self.callers_threads)


class RayPool(QueuePool):
    """Hosts as Ray actors, one process each: the round's state and the evaluation
    windows go through the object store once; a host process that dies is restarted."""

    def __init__(self, hosts: list[Any], options: HostOptions) -> None:
        super().__init__(options)
        self.hosts = hosts
        self._last_shared: tuple[Any, Any] | None = None
        self._load_args: tuple[Any, Any] = (None, None)  # what a restarted host loads again
        self._reviving: set[asyncio.Future[None]] = set()

    @classmethod
    def launch(cls, count: int, options: HostOptions, cpus_per_host: float = 1.0,
               gpus_per_host: float = 0.0, slow: Mapping[int, float] = {}) -> RayPool:
        """Start the actors; `load` then gives them the model and data. `slow`: injected
        delay per job by host index."""
        import ray

        # a host process that dies is restarted (its job is lost and recorded `failed`)
        remote_host = ray.remote(num_cpus=cpus_per_host, num_gpus=gpus_per_host,
                                 max_restarts=HOST_RESTARTS)(AsyncDeviceHost)
        hosts = [remote_host.remote(f"host{i}", replace(options, in_actor=True,
                                                        delay_s=slow.get(i, 0.0)))
                 for i in range(count)]
        return cls(hosts, options)

    async def load(self, model_config: Any, train_windows: Sequence[np.ndarray]) -> None:
        """Give every host the model configuration and the fleet's training windows (put
        in the object store once); a host joins the idle queue once it has them."""
        import ray

        self._load_args = (model_config, ray.put(list(train_windows)))
        await asyncio.gather(*(host.load.remote(*self._load_args) for host in self.hosts))
        for host in self.hosts:
            self.idle.put_nowait(host)

    def share(self, value: Any) -> Any:
        """Publish a value every host reads (the global weights) once, in the object
        store, from where hosts read numpy arrays zero-copy. Sharing the same object again
        (the state evaluated, then trained on next round) reuses it."""
        if self._last_shared is not None and self._last_shared[0] is value:
            return self._last_shared[1]
        import ray

        ref = ray.put(value if isinstance(value, np.ndarray) else dict(value))
        self._last_shared = (value, ref)
        return ref

    def share_parts(self, windows: np.ndarray, parts: int) -> list[Any]:
        import ray

        return [ray.put(c) for c in chunks(windows, parts)]

    async def _evaluate_on(self, host: Any, shared_state: Any, part: Any, plan: TrainingPlan
                           ) -> dict[str, float]:
        return await host.evaluate.remote(shared_state, part, plan)  # type: ignore[no-any-return]

    async def _run(self, job: Job, shared_state: Any) -> JobResult:
        from ray.exceptions import RayActorError

        host = await self.idle.get()
        try:
            result = verified(await host.train.remote(job, shared_state))
        except RayActorError as err:  # the host process died while it trained this job
            log.warning("host lost while training device %d: %r", job.device_id, err)
            revival = asyncio.ensure_future(self._revive(host))
            self._reviving.add(revival)
            revival.add_done_callback(self._reviving.discard)
            return JobResult(job.device_id, "failed", None, None, 0, 0.0, "lost",
                             f"host lost: {type(err).__name__}")
        self.idle.put_nowait(host)
        return result

    async def _revive(self, host: Any) -> None:
        """Keep a dead host out of the queue until Ray has started it again and it has
        loaded the model and data (jobs meanwhile go to the other hosts); one that does not
        come back within a minute is dropped."""
        from ray.exceptions import RayActorError

        for _ in range(REVIVE_TRIES):
            try:
                await host.load.remote(*self._load_args)  # a restarted actor starts empty
            except RayActorError:
                await asyncio.sleep(REVIVE_WAIT_S)
                continue
            self.idle.put_nowait(host)
            return
        log.error("a host did not come back; the pool goes on without it")

    def close(self) -> None:
        import ray

        for host in self.hosts:
            ray.kill(host)


def chunks(windows: np.ndarray, parts: int) -> list[np.ndarray]:
    """Evaluation windows cut into `parts` (a fixed number, so results do not depend on
    the pool's size), empty parts left out."""
    return [c for c in np.array_split(windows, parts) if len(c)]


class DryPool:
    """The pool of a dry run: every job the clock lets finish counts as done, nothing
    trains (no update, nothing measured) and nothing is evaluated."""

    hosts: list[Any] = []

    async def load(self, model_config: Any, train_windows: Sequence[np.ndarray]) -> None:
        pass

    def share(self, value: Any) -> Any:
        return value

    async def train_all(self, jobs: Sequence[Job], shared_state: Any) -> list[JobResult]:
        return [JobResult(job.device_id, "ok", None, None, 0, 0.0, "dry-run")
                for job in sorted(jobs, key=lambda j: j.device_id)]

    def share_parts(self, windows: Any, parts: int) -> list[Any]:
        return []

    async def evaluate(self, shared_state: Any, parts: Any, plan: TrainingPlan
                       ) -> dict[str, float | None]:
        return {"accuracy": None, "loss": None}

    def close(self) -> None:
        pass
