"""One contract, every registered policy: plans fit predicted memory, planned groups
exist, no updates means no change, inputs are not mutated, the same seed gives the
same plans."""

from __future__ import annotations

import numpy as np
import pytest

from fleetsim.device.cost import group_param_counts, predict_peak_bytes
from fleetsim.device.training import model_state
from fleetsim.types import (
    DeviceState,
    ModelInfo,
    OptimizerSpec,
    RoundContext,
    SetupContext,
    TrainingDefaults,
    Update,
)
from fleetsim.zoo.model import ZOO, TinyGPT, group_of, layer_groups
from policies import create_policy, registered

TRAINING = TrainingDefaults(local_steps=4, local_epochs=None, batch_size=16, lr=0.01,
                            optimizer=OptimizerSpec("adam"), seq_len=80)
MIB = 1 << 20
# from a device that fits nothing to one that fits everything, with slow and fast links
FLEET = tuple(DeviceState(i, "test", mem * MIB, flops, up, up * 4, 0.02, 0.0, 50)
              for i, (mem, flops, up) in enumerate([(2, 1e9, 1e6), (16, 2e9, 5e6),
                                                    (48, 5e9, 1e7), (120, 2e10, 2e7),
                                                    (400, 4e10, 5e7), (2048, 6e10, 1e8)]))
STATES: dict[str, dict[str, np.ndarray]] = {}


def round_context(model_name: str, seed: int = 0) -> RoundContext:
    config = ZOO[model_name].config
    groups = tuple(layer_groups(config.n_layer))
    counts = group_param_counts(config)
    info = ModelInfo(model_name, config.n_layer, groups, {g: counts[g] for g in groups}, config)
    return RoundContext(3, 10, 1000.0, FLEET, info, TRAINING, 120.0, None,
                        np.random.default_rng(seed))


def state_of(model_name: str) -> dict[str, np.ndarray]:
    if model_name not in STATES:
        STATES[model_name] = model_state(TinyGPT(ZOO[model_name].config))
    return STATES[model_name]


@pytest.fixture(params=sorted(registered()))
def setup(request: pytest.FixtureRequest) -> tuple[object, RoundContext]:
    policy = create_policy(request.param, {})
    choice = policy.setup(SetupContext(FLEET, "gpt-4x128", TRAINING, 120.0, 10))
    assert choice.model_name in ZOO
    return policy, round_context(choice.model_name)


def test_plans_fit_and_name_real_groups(setup: tuple) -> None:
    policy, ctx = setup
    plans = policy.plan_round(ctx)
    assert set(plans) <= {d.device_id for d in ctx.devices}
    assert plans, "some device of the fleet can train something"
    for device_id, plan in plans.items():
        assert set(plan.train) | set(plan.frozen) <= set(ctx.model.groups)
        assert not set(plan.train) & set(plan.frozen)
        assert plan.train and plan.local_steps >= 1
        peak = predict_peak_bytes(ctx.model.config, plan, ctx.training.seq_len)
        assert peak <= ctx.devices[device_id].memory_bytes


def test_same_seed_same_plans(setup: tuple) -> None:
    policy, ctx = setup
    again = round_context(ctx.model.name, seed=0)
    assert policy.plan_round(ctx) == policy.plan_round(again)


def test_no_updates_no_change_and_inputs_untouched(setup: tuple) -> None:
    policy, ctx = setup
    state = state_of(ctx.model.name)
    before = {k: v.copy() for k, v in state.items()}
    unchanged = policy.aggregate(ctx, state, [])
    assert all(np.array_equal(unchanged[k], before[k]) for k in before)
    plans = policy.plan_round(ctx)
    rng = np.random.default_rng(1)
    updates = [Update(d, 10.0 + d, {k: rng.standard_normal(v.shape).astype(np.float32)
                                    for k, v in state.items() if group_of(k) in plan.train})
               for d, plan in sorted(plans.items())]
    sent = [{k: v.copy() for k, v in u.tensors.items()} for u in updates]
    new = policy.aggregate(ctx, state, updates)
    assert all(np.array_equal(state[k], before[k]) for k in before)  # state not mutated
    assert all(np.array_equal(u.tensors[k], s[k])
               for u, s in zip(updates, sent, strict=True) for k in s)
    trained = {group_of(k) for u in updates for k in u.tensors}
    for key in state:
        changed = not np.array_equal(new[key], before[key])
        assert changed == (group_of(key) in trained), key
