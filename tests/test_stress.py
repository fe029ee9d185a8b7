"""The stress scenarios run to the end, and their records show what happened to every
device: drop-outs, squeezes, corrupted uploads, killed hosts (on real Ray hosts)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from fleetsim import PROJECT_ROOT
from fleetsim.config.scenario import load_scenario
from fleetsim.runtime.engine import run_scenario
from fleetsim.runtime.session import RunSetup
from fleetsim.types import MIB
from fleetsim.views.metrics import read_jsonl
from fleetsim.views.monitor import PlainObserver
from tests.conftest import PEAK_TOLERANCE, predicted_peak

pytestmark = pytest.mark.slow

STRESS = PROJECT_ROOT / "scenarios" / "stress"
QUICK = {"training.local_steps": "3", "eval.every": "100", "eval.max_samples": "50"}


def run_stress(name: str, tmp_path: Path, **overrides: str) -> tuple[Path, list[dict]]:
    source = STRESS / f"{name}.yaml"
    scenario = load_scenario(source, {**QUICK, **overrides})
    out = tmp_path / name
    with (tmp_path / "log").open("w") as log:
        summary = asyncio.run(run_scenario(RunSetup(scenario, source), out,
                                           PlainObserver(out, log)))
    assert summary["rounds_completed"] == scenario.rounds
    return out, read_jsonl(out / "devices.jsonl")


def test_churn_storm_drops_devices_mid_round(tmp_path: Path) -> None:
    _, devices = run_stress("churn_storm", tmp_path, **{"workers.backend": "local"})
    status = Counter(d["status"] for d in devices)
    assert status["offline"] > 0 and status["ok"] > 0
    assert all(d["bytes_up"] == 0 for d in devices if d["status"] == "offline")


def test_memory_squeeze_causes_oom_then_sitting_out(tmp_path: Path) -> None:
    # the scenario's own round lengths, so that the squeeze starts inside a round
    out, devices = run_stress("memory_squeeze", tmp_path,
                            **{"workers.backend": "local", "training.local_steps": "10"})
    # FedAvg's full plan fits 24 MB but not the 40% the squeeze leaves: exactly the
    # low-end phones whose job meets the squeeze run out, their peak past the cap
    full = predicted_peak(load_scenario(out / "scenario.yaml"), "full")
    squeezed = 0.4 * 24 * MIB
    assert squeezed < full < 24 * MIB
    low = [d for d in devices if d["device_class"] == "phone_low"]
    oom = [d for d in low if d["status"] == "oom"]
    assert oom and all(d["mem_cap_bytes"] == pytest.approx(squeezed, abs=1)
                       and d["peak_mem_bytes"] > d["mem_cap_bytes"] for d in oom)
    assert {d["status"] for d in low if d["mem_cap_bytes"] == 24 * MIB} <= {"ok", "offline"}
    skipped = [d["round"] for d in low if d["status"] == "skipped"]
    assert skipped and min(skipped) > min(d["round"] for d in oom)  # squeezed: planned out
    assert any(d["status"] == "ok" and d["round"] > max(skipped) for d in low)  # restored
    assert all(d["peak_mem_bytes"] == pytest.approx(full, rel=PEAK_TOLERANCE)
               for d in devices if d["status"] == "ok")


def test_flaky_network_drops_corrupted_uploads(tmp_path: Path) -> None:
    _, devices = run_stress("flaky_network", tmp_path, **{"workers.backend": "local"})
    failed = [d for d in devices if d["status"] == "failed"]
    assert failed and all("checksum" in d["error"] for d in failed)
    assert any(d["status"] == "straggler" for d in devices)


def test_host_crashes_fail_only_the_jobs_they_hit(tmp_path: Path, ray_session: None) -> None:
    out, devices = run_stress("host_crashes", tmp_path, rounds="5")
    summary = json.loads((out / "summary.json").read_text())
    failed = [(d["round"], d["error"]) for d in devices if d["status"] == "failed"]
    assert [r for r, _ in failed] == [1, 4]  # the crash rounds within the first five
    assert all("host lost" in e for _, e in failed)
    assert summary["device_rounds"]["completed"] == 5 * 6 - 2

