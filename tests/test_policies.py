"""Policies: the registry, FedAvg's planning, and user policy files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetsim.cost import group_param_counts, predict_peak_bytes
from fleetsim.model import ZOO, layer_groups
from fleetsim.types import (
    DeviceState,
    ModelInfo,
    OptimizerSpec,
    RoundContext,
    TrainingDefaults,
    Update,
)
from policies import create_policy, registered

CFG = ZOO["gpt-2x64"].config
TRAINING = TrainingDefaults(local_steps=None, local_epochs=2.0, batch_size=8, lr=0.1,
                            optimizer=OptimizerSpec("sgd", 0.9), seq_len=32)


def device(device_id: int, memory_bytes: int, examples: int = 20) -> DeviceState:
    return DeviceState(device_id, "test", memory_bytes, 1e9, 1e6, 1e6, 0.01, 0.0, examples)


def context(devices: tuple[DeviceState, ...]) -> RoundContext:
    model = ModelInfo("gpt-2x64", CFG.n_layer, tuple(layer_groups(CFG.n_layer)),
                      group_param_counts(CFG), CFG)
    return RoundContext(0, 5, 0.0, devices, model, TRAINING, 600.0, None,
                        np.random.default_rng(0))


def test_registry_holds_fedavg() -> None:
    assert "fedavg" in registered()
    with pytest.raises(LookupError, match="unknown policy"):
        create_policy("fedavgg", {})


def test_fedavg_plans_full_training_and_sits_out_small_devices() -> None:
    policy = create_policy("fedavg", {})
    ctx = context((device(0, 10**9), device(1, 1024), device(2, 10**9, examples=40)))
    plans = policy.plan_round(ctx)
    assert sorted(plans) == [0, 2]  # device 1 cannot fit full finetuning
    assert plans[0].train == ctx.model.groups and plans[0].frozen == ()
    assert plans[0].local_steps == 5 and plans[2].local_steps == 10  # 2 epochs of 20 / 40
    for d, plan in plans.items():
        assert predict_peak_bytes(CFG, plan, TRAINING.seq_len) <= ctx.devices[d].memory_bytes


def test_fedavg_aggregates_by_examples() -> None:
    policy = create_policy("fedavg", {})
    state = {"w": np.zeros(2, np.float32)}
    updates = [Update(0, 1.0, {"w": np.array([1, 1], np.float32)}),
               Update(1, 3.0, {"w": np.array([5, 5], np.float32)})]
    new = policy.aggregate(context(()), state, updates)
    np.testing.assert_allclose(new["w"], [4, 4])
    assert state["w"].sum() == 0


def test_user_policy_file(tmp_path: Path) -> None:
    source = tmp_path / "mine.py"
    source.write_text("class Mine:\n    name = 'mine'\n    def __init__(self, k=1):\n"
                      "        self.k = k\n")
    policy = create_policy(f"{source}:Mine", {"k": 3})
    assert policy.k == 3
    with pytest.raises(LookupError, match="no class"):
        create_policy(f"{source}:Other", {})
