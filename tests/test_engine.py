"""End to end: the smoke scenario through the engine on a real local Ray."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleetsim.config.scenario import load_scenario
from fleetsim.runtime.engine import run_scenario
from fleetsim.runtime.session import RunSetup
from fleetsim.types import MIB
from fleetsim.views.metrics import read_jsonl
from fleetsim.views.monitor import PlainObserver
from fleetsim.zoo.model import ZOO, TinyGPT
from tests.conftest import PEAK_TOLERANCE, SMOKE, predicted_peak, run_yaml

WALL_FIELDS = {"wall_time_s"}
DEVICE_FIELDS = {"device_id", "device_class", "round", "plan", "status", "peak_mem_bytes",
                 "mem_cap_bytes", "flops", "compute_s", "download_s", "upload_s", "host"}


def run_smoke(out: Path, **overrides: str) -> dict[str, Any]:
    scenario = load_scenario(SMOKE, overrides)
    with (out.parent / f"{out.name}.log").open("w") as log:
        return asyncio.run(run_scenario(RunSetup(scenario, SMOKE), out, PlainObserver(out, log)))


def without_wall_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in WALL_FIELDS} for row in rows]


@pytest.fixture(scope="module")
def two_worker_run(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "two"
    run_smoke(out, **{"workers.count": "2"})
    return out


def test_smoke_writes_every_round_and_device(two_worker_run: Path) -> None:
    rounds = read_jsonl(two_worker_run / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["accuracy"] is not None for r in rounds)  # eval.every is 1
    assert all(r["completed"] >= 1 and r["aggregated"] for r in rounds)
    times = [r["sim_time_s"] for r in rounds]
    assert times == sorted(times) and times[0] > 0
    devices = read_jsonl(two_worker_run / "devices.jsonl")
    assert all(set(d) >= DEVICE_FIELDS for d in devices)
    assert len(devices) == sum(r["selected"] for r in rounds)
    ok = [d for d in devices if d["status"] == "ok"]
    assert len(ok) == sum(r["completed"] for r in rounds)
    assert len({d["host"] for d in ok}) == 2  # both Ray hosts trained devices
    # every device holds FedAvg's full plan, so none runs out, and each measured peak is
    # what the cost model predicts for that plan (the meter counted the real training)
    full = predicted_peak(load_scenario(SMOKE), "full")
    assert all(d["mem_cap_bytes"] > 2 * full for d in devices)
    assert all(d["peak_mem_bytes"] == pytest.approx(full, rel=PEAK_TOLERANCE) for d in ok)
    summary = json.loads((two_worker_run / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert summary["final_accuracy"] == rounds[-1]["accuracy"]
    written = load_scenario(two_worker_run / "scenario.yaml")  # resolved, reloadable
    assert written == load_scenario(SMOKE, {"workers.count": "2"})


def test_bytes_are_the_model_each_way(two_worker_run: Path) -> None:
    """FedAvg's whole model goes up from each device that trained: float32 parameters,
    counted from the model itself; the summary adds them up."""
    summary = json.loads((two_worker_run / "summary.json").read_text())
    devices = read_jsonl(two_worker_run / "devices.jsonl")
    model = TinyGPT(ZOO["gpt-2x64"].config)
    model_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert all(d["bytes_up"] == model_bytes for d in devices if d["status"] == "ok")
    assert summary["bytes_up"] == model_bytes * sum(d["status"] == "ok" for d in devices)


@pytest.mark.parametrize("count", [1, 3])  # 3 hosts on 2 CPUs share them, none waits
def test_same_seed_same_rounds_on_any_number_of_workers(two_worker_run: Path, tmp_path: Path,
                                                        count: int) -> None:
    run_smoke(tmp_path / "other", **{"workers.count": str(count)})
    other = without_wall_time(read_jsonl(tmp_path / "other" / "rounds.jsonl"))
    two = without_wall_time(read_jsonl(two_worker_run / "rounds.jsonl"))
    assert other == two
    devices = read_jsonl(tmp_path / "other" / "devices.jsonl")
    hostless = [{k: v for k, v in d.items() if k != "host"} for d in devices]
    assert hostless == [{k: v for k, v in d.items() if k != "host"}
                        for d in read_jsonl(two_worker_run / "devices.jsonl")]
    assert len({d["host"] for d in devices if d["status"] == "ok"}) == count


def test_in_process_backend_matches_ray(two_worker_run: Path, tmp_path: Path) -> None:
    run_smoke(tmp_path / "local", **{"workers.backend": "local"})
    local = without_wall_time(read_jsonl(tmp_path / "local" / "rounds.jsonl"))
    assert local == without_wall_time(read_jsonl(two_worker_run / "rounds.jsonl"))


@pytest.mark.slow
def test_cli_run_smoke(two_worker_run: Path, tmp_path: Path) -> None:
    """The documented command, in its own process with its own Ray: the same rounds as
    the engine run in this process, a line for each."""
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "fleetsim", "run", str(SMOKE), "--no-live",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rounds = without_wall_time(read_jsonl(out / "rounds.jsonl"))
    assert rounds == without_wall_time(read_jsonl(two_worker_run / "rounds.jsonl"))
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("round ")] == \
        ["round 0", "round 1", "round 2"]
    for r in rounds:
        line = next(line for line in lines if line.startswith(f"round {r['round']}:"))
        assert f"accuracy {r['accuracy']:.4f}" in line and f"ok {r['completed']} " in line
    assert lines[-1].startswith("done: ")


def test_cli_refuses_to_overwrite_a_run(two_worker_run: Path, capsys: pytest.CaptureFixture) \
        -> None:
    from fleetsim.cli import main

    before = (two_worker_run / "rounds.jsonl").read_bytes()
    assert main(["run", str(SMOKE), "--no-live", "--out", str(two_worker_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "already holds a run" in err[0]
    assert (two_worker_run / "rounds.jsonl").read_bytes() == before


def test_fleet_larger_than_the_corpus_is_bad_input(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from fleetsim.cli import main

    scenario = tmp_path / "huge.yaml"
    scenario.write_text("rounds: 1\nfleet: [{class: phone_mid, count: 5000}]\n")
    assert main(["run", str(scenario), "--no-live", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{scenario}: fleet: " in err[0] and "5000 clients" in err[0]
    assert not (tmp_path / "out" / "rounds.jsonl").exists()


def test_caff_plans_per_device_in_a_real_run(tmp_path: Path) -> None:
    _, out = run_yaml(tmp_path, """
name: caff-small
rounds: 2
model: {name: gpt-2x64}
fleet:
  - {class: phone_low, count: 2, overrides: {memory_mb: 4}}
  - {class: phone_low, count: 2, overrides: {memory_mb: 7}}
  - {class: phone_mid, count: 2}
selection: {devices_per_round: 6, deadline_s: 100000}
training: {local_steps: 2, batch_size: 8}
policy: {name: caff, params: {models: [gpt-2x64]}}
workers: {backend: local}
eval: {every: 2, max_samples: 50}
""")
    # 4 MB holds the head alone (one block more needs 5 MB), 7 MB one block and the head
    # (two need 8.5 MB), a phone everything: each device trains the most its cap allows,
    # and the meter measures what the cost model predicts for that plan
    scenario = load_scenario(out / "scenario.yaml")
    assert predicted_peak(scenario, "last:1") > 4 * MIB
    assert predicted_peak(scenario, "last:2") > 7 * MIB
    expected = {4 * MIB: ("train=head;frozen=embed,block.0,block.1", "head"),
                7 * MIB: ("train=block.1,head;frozen=embed,block.0", "last:1"),
                512 * MIB: ("train=embed,block.0,block.1,head;frozen=", "full")}
    records = read_jsonl(out / "devices.jsonl")
    assert len(records) == 12
    for r in records:
        plan, spec = expected[r["mem_cap_bytes"]]
        assert (r["plan"], r["status"]) == (plan, "ok")
        assert r["peak_mem_bytes"] == pytest.approx(predicted_peak(scenario, spec),
                                                     rel=PEAK_TOLERANCE)
