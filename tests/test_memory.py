"""Memory caps that bite: the meter counts live tensor bytes exactly and fails at the
allocation that crosses the cap; hosts turn that into an `oom` record; runs go on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fleetsim.device.cost import parse_plan, predict_peak_bytes
from fleetsim.device.memory import CudaMemoryCap, MemoryMeter
from fleetsim.device.training import model_state
from fleetsim.errors import DeviceOOM
from fleetsim.runtime.workers import DeviceHost, Job
from fleetsim.types import OptimizerSpec
from fleetsim.views.metrics import read_jsonl
from fleetsim.zoo.model import ZOO, TinyGPT
from tests.conftest import PEAK_TOLERANCE, run_yaml

CFG = ZOO["gpt-2x64"].config
SEQ = 32
WINDOWS = [np.random.default_rng(i).integers(0, 90, (20, SEQ + 1)).astype(np.uint8)
           for i in range(2)]


def test_meter_counts_allocations_and_frees() -> None:
    with MemoryMeter() as meter:
        a = torch.ones(1000)  # 4000 bytes
        view = a.view(10, 100)  # same storage: not counted again
        assert meter.live_bytes == 4000
        b = a * 2
        assert meter.live_bytes == 8000
        del a, view, b
        assert meter.live_bytes == 0
    assert meter.peak_bytes == 8000


def test_resident_tensors_count_from_the_start() -> None:
    weights = [torch.zeros(256), torch.zeros(256)]
    meter = MemoryMeter(resident=weights)
    assert meter.live_bytes == meter.peak_bytes == 2048


def test_crossing_the_cap_raises_at_that_allocation() -> None:
    with pytest.raises(DeviceOOM) as info, MemoryMeter(cap_bytes=10_000):
        kept = [torch.ones(1000) for _ in range(2)]  # 8000 bytes: fine
        kept.append(torch.ones(1000))  # 12000 bytes: crosses
    assert info.value.requested_bytes == 12_000 and info.value.cap_bytes == 10_000


def test_oom_inside_backward_keeps_its_type() -> None:
    x = torch.ones(64, 64, requires_grad=True)
    with pytest.raises(DeviceOOM), MemoryMeter(cap_bytes=40_000):
        (x @ x).sum().backward()  # the gradient allocation crosses the cap


def host_job(cap_bytes: int, spec: str = "full") -> tuple[DeviceHost, Job]:
    plan = parse_plan(spec, CFG, batch_size=8, local_steps=2, lr=0.01)
    return DeviceHost("test", CFG, WINDOWS), Job(0, 0, plan, seed=0, mem_cap_bytes=cap_bytes)


def test_host_reports_oom_with_measured_bytes_and_recovers() -> None:
    host, job = host_job(cap_bytes=10**9)
    state = model_state(TinyGPT(CFG))
    predicted = predict_peak_bytes(CFG, job.plan, SEQ)
    squeezed = Job(0, 0, job.plan, seed=0, mem_cap_bytes=predicted // 2)
    oom = host.train(squeezed, state)
    assert oom.status == "oom" and oom.update is None
    assert oom.peak_mem_bytes > squeezed.mem_cap_bytes
    ok = host.train(job, state)  # the same host trains the next device normally
    assert ok.status == "ok" and ok.update is not None
    assert ok.peak_mem_bytes <= job.mem_cap_bytes
    assert ok.peak_mem_bytes == pytest.approx(predicted, rel=0.10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_cap_raises_device_oom() -> None:
    device = torch.device("cuda")
    with pytest.raises(DeviceOOM), CudaMemoryCap(64 << 20, device):
        torch.empty(256 << 20, dtype=torch.uint8, device=device)
    with CudaMemoryCap(64 << 20, device) as cap:
        torch.empty(16 << 20, dtype=torch.uint8, device=device)
    assert 16 << 20 <= cap.peak_bytes <= 64 << 20


def test_policy_that_ignores_caps_gets_oom_for_every_over_cap_job(
        ray_session: None, tmp_path: Path) -> None:
    policy = Path(__file__).parent / "policies" / "ignore_caps.py"
    _, out = run_yaml(tmp_path, f"""
name: caps
rounds: 2
model: {{name: gpt-2x64}}
fleet:
  - {{class: phone_low, count: 3, overrides: {{memory_mb: 4}}}}
  - {{class: phone_mid, count: 3}}
selection: {{devices_per_round: 6, deadline_s: 100000}}
training: {{local_steps: 2, batch_size: 8}}
policy: {{name: "{policy}:IgnoreCaps"}}
workers: {{count: 2}}
eval: {{every: 2, max_samples: 50}}
""")
    records = read_jsonl(out / "devices.jsonl")
    plan = parse_plan("full", CFG, batch_size=8)
    predicted = predict_peak_bytes(CFG, plan, 80)  # the scenario's default seq_len
    over = [r for r in records if r["mem_cap_bytes"] < predicted]
    under = [r for r in records if r["mem_cap_bytes"] >= predicted * 1.1]
    assert len(over) == 6 and len(under) == 6
    assert all(r["status"] == "oom" and r["peak_mem_bytes"] > r["mem_cap_bytes"] for r in over)
    assert all(r["status"] == "ok" and r["peak_mem_bytes"] == pytest.approx(
        predicted, rel=PEAK_TOLERANCE) for r in under)
    rounds = read_jsonl(out / "rounds.jsonl")
    assert [r["oom"] for r in rounds] == [3, 3] and all(r["aggregated"] for r in rounds)


@pytest.mark.parametrize("spec", ["full", "head", "lora:4"])
def test_metering_two_steps_sees_the_peak_of_every_step(spec: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Later steps repeat the second exactly, so the hosts meter only the first two."""
    import fleetsim.device.training as training

    plan = parse_plan(spec, CFG, batch_size=8, local_steps=5, lr=0.01,
                      optimizer=OptimizerSpec("adam"))

    def peak(metered_steps: int) -> int:
        monkeypatch.setattr(training, "METERED_STEPS", metered_steps)
        torch.manual_seed(0)
        model = training.model_for_plan(CFG, plan)
        meter = MemoryMeter(resident=model.state_dict().values())
        training.train_local(model, plan, WINDOWS[0], seed=0, meter=meter)
        return meter.peak_bytes

    assert peak(2) == peak(5)


def test_rlimit_safety_net_stops_a_runaway_process() -> None:
    """Hosts run under RLIMIT_DATA: an allocation far past it fails instead of swapping."""
    import subprocess
    import sys

    code = ("from fleetsim.device.memory import limit_process_data\n"
            "import numpy as np\n"
            "assert limit_process_data(64 << 20)\n"
            "small = np.ones(8 << 20, np.uint8)\n"
            "try:\n"
            "    np.ones(512 << 20, np.uint8)\n"
            "except MemoryError:\n"
            "    print('stopped')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"
