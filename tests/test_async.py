"""Asynchronous mode (FedBuff) end to end: staleness weights and rebased updates by hand,
K = concurrency without stragglers is the synchronous aggregate, every registered policy
runs, the same seed gives the same records on 1 and 2 hosts, the views and `compare
--modes` show both modes, time to accuracy is read as documented. The clock's event order
is in test_dispatch.py, kill and resume in test_resume.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fleetsim
from fleetsim.config.scenario import FedBuffConfig, StalenessConfig
from fleetsim.errors import ConfigError
from fleetsim.runtime.aggregate import masked_mean, rebased, staleness_weight
from fleetsim.types import Update
from fleetsim.world.dispatch import AsyncTimeline, Dispatch
from policies import registered
from tests.test_resume import without_wall_time

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "scenarios" / "smoke.yaml"
# 6 devices, 4 training at once, a step every 2 arrivals: updates one or two steps old
ASYNC = {"selection__mode": "async", "rounds": 4, "workers__backend": "local",
         "selection__fedbuff": {"concurrency": 4, "buffer_size": 2},
         "training__local_steps": 2, "eval__max_samples": 40}


@pytest.mark.parametrize(("kind", "staleness", "weight"), [
    ("constant", 7, 1.0), ("polynomial", 0, 1.0), ("polynomial", 3, 0.5),  # 4 ** -0.5
    ("hinge", 2, 1.0), ("hinge", 4, 1 / 3)])  # a = 1, b = 2: 1 / (1 * (4 - 2) + 1)
def test_staleness_weights(kind: str, staleness: int, weight: float) -> None:
    config = StalenessConfig(kind=kind, a=1.0 if kind == "hinge" else 0.5, b=2)
    assert staleness_weight(config, staleness) == pytest.approx(weight)


def test_a_stale_update_is_its_weighted_delta_on_the_newest_version() -> None:
    start = {"w": np.array([1.0, 2.0, 3.0], np.float32)}
    now = {"w": np.array([10.0, 20.0, 30.0], np.float32)}
    update = Update(0, 1.0, {"w": np.array([2.0, 4.0], np.float32)},
                    {"w": (np.array([0, 2]),)})  # trained elements 0 and 2 only
    moved = rebased(update, start, now, factor=0.5)
    assert moved.tensors["w"].tolist() == [10.5, 30.5]  # now + 0.5 x (trained - start)
    applied = masked_mean(now, [moved])
    assert applied["w"].tolist() == [10.5, 20.0, 30.5]


def test_k_equal_to_concurrency_without_stragglers_is_the_synchronous_aggregate() -> None:
    """All C devices start from version 0 and make step 1 together, unweighted: the
    updates go to the policy's aggregation as they are, as in a synchronous round."""
    busy = {0: 3.0, 1: 5.0, 2: 4.0}

    def dispatch(now_s, count, version, in_flight):  # type: ignore[no-untyped-def]
        free = [d for d in busy if d not in in_flight][:count]
        return [Dispatch(d, 1.0, busy[d] - 2, 1.0, np.inf) for d in free]

    step = AsyncTimeline(FedBuffConfig(concurrency=3, buffer_size=3), 100.0,
                         dispatch).next_step()
    assert [(j.dispatch.device_id, j.start_version, j.staleness) for j in step.arrived] == \
        [(0, 0, 0), (2, 0, 0), (1, 0, 0)]
    rng = np.random.default_rng(0)
    state = {"w": rng.standard_normal((3, 4)).astype(np.float32)}
    updates = [Update(d, d + 1.0, {"w": rng.standard_normal((3, 4)).astype(np.float32)})
               for d in range(3)]
    weight = staleness_weight(StalenessConfig(), 0)
    assert [rebased(u, state, state, weight) for u in updates] == updates
    assert all(np.array_equal(a, b) for a, b in zip(
        masked_mean(state, [rebased(u, state, state, weight) for u in updates]).values(),
        masked_mean(state, updates).values(), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("policy", sorted(registered()))
def test_every_policy_runs_asynchronously(tmp_path: Path, policy: str) -> None:
    # CAFF and small_model choose their model: held to the pretrained one, or from scratch
    params = {"models": ["gpt-2x64"]} if policy == "caff" else {}
    init = "scratch" if policy == "small_model" else "pretrained"
    result = fleetsim.run(SMOKE, out=tmp_path / "run", progress="none", policy__name=policy,
                          policy__params=params, model__init=init, **ASYNC)
    steps, jobs = result.rounds, result.devices
    assert [s["round"] for s in steps] == [0, 1, 2, 3]
    assert all(s["completed"] + s["oom"] + s["failed"] == 2 for s in steps)  # K = 2
    assert any(j["staleness"] for j in jobs if j["status"] == "ok")  # some update is old
    assert all(j["dispatch_s"] < j["end_s"] <= s["sim_time_s"] for s in steps for j in jobs
               if j["round"] == s["round"] and j["status"] != "skipped")
    times = [s["sim_time_s"] for s in steps]
    assert times == sorted(times)
    assert result.summary["rounds_aggregated"] == 4


@pytest.mark.slow
@pytest.mark.ray
def test_same_seed_same_records_on_one_and_two_hosts(tmp_path: Path, ray_session: None) -> None:
    churn = {"fleet": [{"class": "phone_low", "count": 4,
                        "availability": {"kind": "markov", "mean_online_s": 3,
                                         "mean_offline_s": 2}},
                       {"class": "rpi4", "count": 4}], "rounds": 6}
    one = fleetsim.run(SMOKE, out=tmp_path / "one", progress="none",
                       **{**ASYNC, **churn})
    two = fleetsim.run(SMOKE, out=tmp_path / "two", progress="none",
                       **{**ASYNC, **churn, "workers__backend": "ray", "workers__count": 2})
    assert {"ok", "offline"} <= {j["status"] for j in one.devices}
    assert without_wall_time(one.rounds) == without_wall_time(two.rounds)
    assert without_wall_time(one.devices) == without_wall_time(two.devices)


def test_the_views_show_staleness(tmp_path: Path) -> None:
    """The plain line, the live view's table and the report state each step's staleness
    as the job records give it."""
    from rich.console import Console

    from fleetsim.types import JobRecord, StepRecord
    from fleetsim.views.dashboard import RunView, render
    from fleetsim.views.metrics import load_run as run_data
    from fleetsim.views.monitor import round_line
    from fleetsim.views.report import terminal_summary

    result = fleetsim.run(SMOKE, out=tmp_path / "run", progress="none", **ASYNC)
    ok = [j for j in result.devices if j["status"] == "ok"]
    mean = sum(j["staleness"] for j in ok) / len(ok)
    console = Console(width=200, record=True)
    console.print(terminal_summary(run_data(tmp_path / "run")))
    assert f"{len(ok)} updates applied, staleness mean {mean:.2f} " \
           f"(max {max(j['staleness'] for j in ok)})" in console.export_text()

    steps = [StepRecord(**r) for r in result.rounds]
    last = [j for j in ok if j["round"] == 3]
    assert f"staleness {steps[3].staleness_mean:.1f}/{steps[3].staleness_max} " \
           f"in flight {steps[3].in_flight}" in round_line(steps[3])
    assert steps[3].staleness_mean == pytest.approx(
        sum(j["staleness"] for j in last) / len(last))
    view = RunView(rounds=steps, devices=[JobRecord(**j) for j in result.devices])
    console = Console(width=200, record=True)
    console.print(render(view))
    assert "in flight" in console.export_text()


def test_compare_puts_both_modes_side_by_side(tmp_path: Path) -> None:
    comparison = fleetsim.compare(SMOKE, ["fedavg"], out=tmp_path / "cmp", progress="none",
                                  modes=["sync", "async"],
                                  **{k: v for k, v in ASYNC.items() if k != "selection__mode"})
    assert [row["policy"] for row in comparison.rows] == ["fedavg (sync)", "fedavg (async)"]
    sync, fedbuff = comparison.runs["fedavg (sync)"], comparison.runs["fedavg (async)"]
    assert "staleness" not in sync.devices[0] and "staleness" in fedbuff.devices[0]
    assert sync.dir.name == "fedavg-sync" and fedbuff.dir.name == "fedavg-async"
    with pytest.raises(ConfigError, match="modes: 'asink' is not a mode"):
        fleetsim.compare(SMOKE, ["fedavg"], out=tmp_path / "bad", modes=["asink"])


def test_time_and_updates_to_accuracy_are_read_from_the_first_step_reaching_it() -> None:
    from fleetsim.api import RunResult
    from fleetsim.suite.asynchrony import interval, reached

    rounds = [{"sim_time_s": 5.0, "accuracy": None, "completed": 5, "aggregated": True},
              {"sim_time_s": 9.0, "accuracy": 0.24, "completed": 4, "aggregated": True},
              {"sim_time_s": 12.0, "accuracy": None, "completed": 5, "aggregated": False},
              {"sim_time_s": 20.0, "accuracy": 0.26, "completed": 5, "aggregated": True}]
    run = RunResult(Path("."), {}, rounds, [])
    assert reached(run, 0.25) == (20.0, 14)  # 5 + 4 + 5 applied; the unapplied 5 not
    assert reached(run, 0.24) == (9.0, 9)
    assert reached(run, 0.3) is None
    assert interval([1.0, None, None], 0) == "not reached in 2 of 3 seeds"
    assert interval([10.0, 20.0], 0) == "15 [-49, 79]"  # 12.706 x 7.07 / sqrt(2) = 63.5
