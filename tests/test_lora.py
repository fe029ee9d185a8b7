"""LoRA through peft: adapters in the global state, heterogeneous ranks as slices."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fleetsim.config.scenario import load_scenario
from fleetsim.device.lora import adapter_shapes, init_adapters
from fleetsim.device.training import model_state
from fleetsim.runtime.aggregate import masked_mean
from fleetsim.runtime.workers import DeviceHost, Job
from fleetsim.types import LoraSpec, TrainingPlan
from fleetsim.views.metrics import read_jsonl
from fleetsim.zoo.model import ZOO, TinyGPT
from policies import create_policy
from tests.conftest import PEAK_TOLERANCE, predicted_peak, run_yaml

CFG = ZOO["gpt-2x64"].config
GLOBAL = LoraSpec(rank=8)
WINDOWS = [np.random.default_rng(0).integers(0, 90, (20, 33)).astype(np.uint8)]


def global_state() -> dict[str, np.ndarray]:
    return {**model_state(TinyGPT(CFG)), **init_adapters(CFG, GLOBAL, seed=0)}


GROUPS = ("embed", "block.0", "block.1", "head")


def evaluation(state: dict[str, np.ndarray], lora: LoraSpec | None) -> dict[str, float]:
    """The evaluation sums of the model `state` holds, adapters at `lora`'s rank."""
    plan = TrainingPlan(train=(), frozen=GROUPS, local_steps=1, batch_size=1, lr=0.0,
                        lora=lora)
    return DeviceHost("t", CFG, WINDOWS).evaluate(state, WINDOWS[0], plan)


def test_initial_adapters_leave_the_model_unchanged() -> None:
    adapters = init_adapters(CFG, GLOBAL, seed=0)
    assert set(adapters) == set(adapter_shapes(CFG, GLOBAL))
    assert len(adapters) == CFG.n_layer * 2 * 2  # q and v, A and B
    # the adapted model scores as the plain one, position for position: B = 0
    base = model_state(TinyGPT(CFG))
    plain, adapted = evaluation(base, None), evaluation({**base, **adapters}, GLOBAL)
    assert plain["positions"] == adapted["positions"] == WINDOWS[0].size - len(WINDOWS[0])
    assert adapted["correct"] == plain["correct"]
    assert adapted["loss_sum"] == pytest.approx(plain["loss_sum"], rel=1e-6)


def test_a_low_rank_device_updates_its_slice_and_the_head_only() -> None:
    host = DeviceHost("t", CFG, WINDOWS)
    groups = ("embed", "block.0", "block.1", "head")
    plan = TrainingPlan(train=("head",), frozen=groups[:-1], local_steps=3, batch_size=4,
                        lr=0.05, lora=LoraSpec(rank=4))
    state = global_state()
    result = host.train(Job(0, 0, plan, seed=0, mem_cap_bytes=1 << 30), state)
    assert result.status == "ok" and result.update is not None
    sent = result.update.tensors
    assert {k for k in sent if "lora_" not in k} == {"ln_f.weight", "ln_f.bias",
                                                     "lm_head.weight"}
    a_key = "blocks.0.attn.q_proj.lora_A.weight"
    assert sent[a_key].shape == (4, CFG.n_embd)
    new = masked_mean(state, [result.update])
    # one update: its rows are the mean; nobody held rows 4..7 (nor B's columns 4..7)
    np.testing.assert_allclose(new[a_key][:4], sent[a_key], rtol=1e-6)
    np.testing.assert_array_equal(new[a_key][4:], state[a_key][4:])
    b_key = "blocks.0.attn.q_proj.lora_B.weight"
    np.testing.assert_allclose(new[b_key][:, :4], sent[b_key], rtol=1e-6)
    assert sent[b_key].any() and not new[b_key][:, 4:].any()  # B moved from 0, its part only
    np.testing.assert_array_equal(new["blocks.0.attn.q_proj.weight"],
                                  state["blocks.0.attn.q_proj.weight"])  # frozen base
    # alpha / r is one constant for every rank: the global model at rank 8 is the rank-4
    # model of its first 4 rows of A and columns of B, as the device trained it
    low = {k: v[:4] if ".lora_A." in k else v[:, :4] if ".lora_B." in k else v
           for k, v in new.items()}
    whole, four = evaluation(new, GLOBAL), evaluation(low, LoraSpec(rank=4))
    assert whole["positions"] == four["positions"] == WINDOWS[0].size - len(WINDOWS[0])
    assert whole["correct"] == four["correct"]
    assert whole["loss_sum"] == pytest.approx(four["loss_sum"], rel=1e-6)
    assert whole["loss_sum"] != pytest.approx(evaluation(state, GLOBAL)["loss_sum"], rel=1e-6)


def test_devices_take_the_largest_rank_that_fits() -> None:
    from fleetsim.device.cost import predict_peak_bytes
    from tests.test_policy_contract import round_context

    policy = create_policy("lora", {"rank": 16, "budget_s": 1e9})
    ctx = round_context("gpt-2x64")
    plans = policy.plan_round(ctx)
    for device in ctx.devices:
        if device.device_id not in plans:
            continue
        plan = plans[device.device_id]
        assert plan.lora is not None and plan.train == ("head",)
        fits = predict_peak_bytes(CFG, plan, ctx.training.seq_len) <= device.memory_bytes
        bigger = [r for r in policy.ranks if r > plan.lora.rank]
        assert fits and all(
            predict_peak_bytes(CFG, replace(plan, lora=LoraSpec(r)), ctx.training.seq_len)
            > device.memory_bytes for r in bigger)
    assert 0 not in plans  # 2 MiB holds no LoRA plan: it sits out


def test_a_lora_run_trains_adapters_on_every_device(tmp_path: Path) -> None:
    summary, out = run_yaml(tmp_path, """
name: lora-small
rounds: 2
model: {name: gpt-2x64}
fleet:
  - {class: phone_low, count: 2}
  - {class: phone_mid, count: 2}
selection: {devices_per_round: 4, deadline_s: 100000}
training: {local_steps: 2, batch_size: 8, optimizer: {name: adam}, lr: 0.01}
policy: {name: lora, params: {rank: 8}}
workers: {backend: local}
eval: {every: 1, max_samples: 50}
""")
    records = read_jsonl(out / "devices.jsonl")
    assert all(r["plan"].endswith(";lora=8:q_proj,v_proj") for r in records)
    # every device holds rank 8 (whether LoRA learns: tests/test_learning.py), and the
    # meter measures what the cost model predicts for it
    lora_peak = predicted_peak(load_scenario(out / "scenario.yaml"), "lora:8")
    assert all(r["status"] == "ok" and r["mem_cap_bytes"] > lora_peak for r in records)
    assert all(r["peak_mem_bytes"] == pytest.approx(lora_peak, rel=PEAK_TOLERANCE)
               for r in records)
    head_and_adapters = 4 * (97 * 64 + 2 * 64 + 2 * 2 * 8 * (64 + 64))  # blocks x (q, v)
    assert all(r["bytes_up"] == head_and_adapters for r in records)
    assert summary["bytes_up"] == len(records) * head_and_adapters


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="rank"):
        create_policy("lora", {"rank": 0})
    with pytest.raises(ValueError, match="targets"):
        create_policy("lora", {"targets": ["wq"]})
