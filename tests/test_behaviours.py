"""What a user would notice, checked against expectations worked out by hand: a dry run
plays the same clock as a real run, the cosine schedule's learning rates, min_updates,
threads_per_host, and bandwidth events. Real runs on the in-process backend, on the
smoke scenario's tiny model with few steps and few evaluation windows."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import fleetsim
from fleetsim import PROJECT_ROOT

SMOKE = PROJECT_ROOT / "scenarios" / "smoke.yaml"


def smoke(**changes: Any) -> dict[str, Any]:
    """The smoke scenario as a dict, cut down (2 local steps, 16 evaluation windows, one
    in-process host) and changed by `changes` (top-level keys)."""
    scenario = yaml.safe_load(SMOKE.read_text())
    scenario.update(training={**scenario["training"], "local_steps": 2},
                    eval={"every": 1, "max_samples": 16},
                    workers={"backend": "local", "count": 1})
    scenario.update(changes)
    return scenario


def model_bytes(name: str = "gpt-2x64") -> int:
    """The bytes of a whole zoo model in float32, as torch counts its parameters."""
    from fleetsim.zoo.model import ZOO, TinyGPT

    return 4 * sum(p.numel() for p in TinyGPT(ZOO[name].config).parameters())


def device_class(name: str) -> dict[str, Any]:
    """A device class as its file says (devices/NAME.yaml), read without fleetsim."""
    return dict(yaml.safe_load((PROJECT_ROOT / "devices" / f"{name}.yaml").read_text()))


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """An in-process host sets the process's torch threads: put them back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def optimizer_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, int]]:
    """(learning rate, torch threads) seen at every optimizer step a host takes, read in
    the thread that trains."""
    from fleetsim.device import training

    seen: list[tuple[float, int]] = []
    make = training.make_optimizer

    def spying(model: Any, plan: Any) -> torch.optim.Optimizer:
        optimizer = make(model, plan)
        step = optimizer.step

        def recorded(*args: Any, **kwargs: Any) -> Any:
            seen.append((optimizer.param_groups[0]["lr"], torch.get_num_threads()))
            return step(*args, **kwargs)

        optimizer.step = recorded  # type: ignore[method-assign]
        return optimizer

    monkeypatch.setattr(training, "make_optimizer", spying)
    return seen


# -- 1. a dry run plays the same clock as a real run --------------------------------------

CHURN = dict(
    rounds=4,
    fleet=[{"class": "phone_low", "count": 2,  # churn: offline devices, drop-outs
            "availability": {"kind": "markov", "mean_online_s": 1.0, "mean_offline_s": 1.0}},
           {"class": "phone_mid", "count": 2, "overrides": {"memory_mb": 4}},  # sit out
           {"class": "rpi4", "count": 2}],
    selection={"devices_per_round": 4, "over_selection": 0.5, "deadline_s": 1.0},
    events=[{"at_s": 1.5, "class": "rpi4", "flops_factor": 0.5}])
# what a dry run cannot know: what training and evaluation measure, and which host ran it
MEASURED_DEVICE = {"peak_mem_bytes", "flops", "host", "loss", "error"}
MEASURED_ROUND = {"wall_time_s", "accuracy", "loss", "train_loss", "aggregated"}


def test_a_dry_run_plays_the_clock_of_the_real_run(tmp_path: Path) -> None:
    real = fleetsim.run(smoke(**CHURN), out=tmp_path / "real", progress="none")
    dry = fleetsim.run(smoke(**CHURN), out=tmp_path / "dry", progress="none", dry_run=True)
    statuses = {d["status"] for d in real.devices}
    assert statuses == {"ok", "straggler", "offline", "skipped"}  # the scenario has them all
    assert len(dry.devices) == len(real.devices) and len(dry.rounds) == len(real.rounds) == 4
    for ours, theirs in zip(dry.devices, real.devices, strict=True):
        same = {k: v for k, v in theirs.items() if k not in MEASURED_DEVICE}
        assert {k: ours[k] for k in same} == same  # selection, plan, status, times, bytes
        if theirs["status"] == "ok":  # measured only in the real run
            assert ours["host"] == "dry-run" and ours["flops"] == ours["peak_mem_bytes"] == 0
            assert 0 < theirs["peak_mem_bytes"] <= theirs["mem_cap_bytes"]
            assert theirs["flops"] > 0 and theirs["loss"] > 0
    for ours, theirs in zip(dry.rounds, real.rounds, strict=True):
        same = {k: v for k, v in theirs.items() if k not in MEASURED_ROUND}
        assert {k: ours[k] for k in same} == same  # times, counts, bytes, who was online
        assert ours["accuracy"] is None and ours["train_loss"] is None
        assert theirs["accuracy"] is not None and theirs["aggregated"]
        assert not ours["aggregated"]  # nothing to aggregate without weights
    assert dry.summary["sim_time_s"] == real.summary["sim_time_s"]
    assert dry.summary["device_rounds"] == real.summary["device_rounds"]


# -- 2. the cosine schedule ---------------------------------------------------------------

def test_cosine_schedule_gives_each_round_its_learning_rate(
        tmp_path: Path, optimizer_steps: list[tuple[float, int]]) -> None:
    from fleetsim.runtime.session import round_lr

    # lr 0.1 down to 0.01 over 5 rounds: 0.01 + 0.045 (1 + cos(pi r / 4)), by hand
    by_hand = [0.1, 0.01 + 0.045 * (1 + math.sqrt(0.5)), 0.055,
               0.01 + 0.045 * (1 - math.sqrt(0.5)), 0.01]
    assert [round_lr(0.1, "cosine", 0.1, r, 5) for r in range(5)] == pytest.approx(by_hand)
    assert [round_lr(0.1, "constant", 0.1, r, 5) for r in range(5)] == [0.1] * 5
    # in a real run, every optimizer step of a round takes that round's rate:
    # 1e-4 down to 1e-5 over 3 rounds is 1e-4, then halfway (5.5e-5), then 1e-5
    training = {**smoke()["training"], "lr": 1e-4, "schedule": "cosine", "lr_min_ratio": 0.1}
    result = fleetsim.run(smoke(training=training), out=tmp_path / "run", progress="none")
    steps = [d["round"] for d in result.devices if d["status"] == "ok" for _ in range(2)]
    assert len(steps) == 2 * result.summary["device_rounds"]["completed"] > 0
    assert [lr for lr, _ in optimizer_steps] == pytest.approx(
        [(1e-4, 5.5e-5, 1e-5)[r] for r in steps], rel=1e-12)


# -- 3. min_updates -------------------------------------------------------------------------

def test_a_round_with_fewer_updates_than_min_updates_keeps_the_model(tmp_path: Path) -> None:
    # three rpi4 train; a fourth with 4 MiB cannot hold full finetuning and sits out, so a
    # round that selects it has 2 updates (< min_updates 3) and must leave the model as is
    scenario = smoke(seed=3, fleet=[{"class": "rpi4", "count": 3},
                                    {"class": "rpi4", "count": 1, "overrides": {"memory_mb": 4}}],
                     selection={"devices_per_round": 3, "deadline_s": 600, "min_updates": 3})
    result = fleetsim.run(scenario, out=tmp_path / "run", progress="none")
    accuracy = [result.summary["initial_accuracy"], *(r["accuracy"] for r in result.rounds)]
    loss = [result.summary["initial_loss"], *(r["loss"] for r in result.rounds)]
    kinds = set()
    for r, record in enumerate(result.rounds):
        ok = [d for d in result.devices if d["round"] == r and d["status"] == "ok"]
        assert record["completed"] == len(ok) and record["bytes_up"] > 0  # they did upload
        expected = len(ok) >= 3
        kinds.add(expected)
        assert record["aggregated"] == expected
        if expected:  # the global model moved
            assert loss[r + 1] != loss[r]
        else:  # the same model evaluated on the same windows: the very same scores
            assert (accuracy[r + 1], loss[r + 1]) == (accuracy[r], loss[r])
    assert kinds == {True, False}  # the seed gives both kinds of round
    assert result.summary["rounds_aggregated"] == sum(r["aggregated"] for r in result.rounds)


# -- 4. threads_per_host --------------------------------------------------------------------

def test_threads_per_host_is_what_torch_trains_with(
        tmp_path: Path, torch_threads: None, optimizer_steps: list[tuple[float, int]]) -> None:
    torch.set_num_threads(1)
    workers = {"backend": "local", "count": 1, "threads_per_host": 2}
    result = fleetsim.run(smoke(rounds=1, workers=workers), out=tmp_path / "run",
                          progress="none")
    assert result.summary["rounds_completed"] == 1 and result.rounds[0]["completed"] == 3
    assert result.rounds[0]["accuracy"] is not None
    assert optimizer_steps and {threads for _, threads in optimizer_steps} == {2}
    assert torch.get_num_threads() == 1  # the caller's own, given back when the run ends


def test_a_host_trains_on_its_threads_in_the_thread_that_trains(
        torch_threads: None, optimizer_steps: list[tuple[float, int]]) -> None:
    """The pools train in worker threads (asyncio.to_thread): those must see the host's
    thread count too, not only the thread that built the host."""
    import asyncio

    import numpy as np

    from fleetsim.device.training import model_state
    from fleetsim.runtime.workers import DeviceHost, HostOptions, Job
    from fleetsim.types import TrainingPlan
    from fleetsim.zoo.model import ZOO, TinyGPT, layer_groups

    config = ZOO["gpt-2x64"].config
    windows = np.random.default_rng(0).integers(3, 60, size=(8, 17)).astype(np.uint8)
    plan = TrainingPlan(train=tuple(layer_groups(config.n_layer)), frozen=(), local_steps=2,
                        batch_size=2, lr=1e-3)
    state = model_state(TinyGPT(config))
    for threads in (3, 1):
        torch.set_num_threads(2)
        host = DeviceHost("h", config, [windows], HostOptions(threads=threads))
        result = asyncio.run(asyncio.to_thread(host.train, Job(0, 0, plan, 1, 1 << 30), state))
        assert result.status == "ok"
        assert [t for _, t in optimizer_steps[-2:]] == [threads, threads]


# -- 5. uplink and downlink events ----------------------------------------------------------

def test_bandwidth_events_set_the_transfer_times_from_their_start_to_their_end(
        tmp_path: Path) -> None:
    # rounds of this fleet take about 2 s; rpi4's links are cut from 1 s to 6 s (uplink
    # x0.5, downlink x0.25), and device 0's uplink from 4 s on (x0.1)
    events = [{"at_s": 1.0, "until_s": 6.0, "class": "rpi4", "uplink_factor": 0.5,
               "downlink_factor": 0.25},
              {"at_s": 4.0, "devices": [0], "uplink_factor": 0.1}]
    scenario = smoke(rounds=6, events=events,
                     fleet=[{"class": "rpi4", "count": 2}, {"class": "phone_low", "count": 2}],
                     selection={"devices_per_round": 4, "deadline_s": 600})
    result = fleetsim.run(scenario, out=tmp_path / "run", progress="none")
    size = model_bytes()  # FedAvg: the whole model down and up
    starts = {r["round"]: r["sim_time_s"] - r["round_time_s"] for r in result.rounds}
    seen = set()
    for d in result.devices:
        spec, start = device_class(d["device_class"]), starts[d["round"]]
        up = down = 1.0  # the factors in force when the device's round starts
        if d["device_class"] == "rpi4" and 1.0 <= start < 6.0:
            up, down = 0.5, 0.25
        if d["device_id"] == 0 and start >= 4.0:
            up *= 0.1
        seen.add((d["device_class"], up, down))
        assert d["download_s"] == pytest.approx(
            spec["latency_s"] + 8 * size / (spec["downlink_bps"] * down), rel=1e-9)
        assert d["upload_s"] == pytest.approx(
            spec["latency_s"] + 8 * size / (spec["uplink_bps"] * up), rel=1e-9)
    # every regime happened: before, during, both events, and after the class's event
    assert seen >= {("rpi4", 1.0, 1.0), ("rpi4", 0.5, 0.25), ("rpi4", 0.05, 0.25),
                    ("rpi4", 0.1, 1.0), ("phone_low", 1.0, 1.0)}
