"""Width-reduced sub-models: slicing the global tensors, training on a host, putting
the update back with the masked mean, and the cost model of mixed-width plans."""

from __future__ import annotations

import numpy as np
import pytest

from fleetsim.aggregate import masked_mean
from fleetsim.cost import parse_plan, predict_peak_bytes, upload_bytes
from fleetsim.model import ZOO, TinyGPT, layer_groups
from fleetsim.submodel import first_slice, random_slice, rolling_slice, uniform
from fleetsim.training import load_state, measure_step, model_for_plan, model_state
from fleetsim.types import OptimizerSpec, Slice, TrainingPlan
from fleetsim.workers import DeviceHost, Job

CFG = ZOO["gpt-2x64"].config  # 4 heads of 16, 256 FFN units
GROUPS = tuple(layer_groups(CFG.n_layer))
WINDOWS = [np.random.default_rng(d).integers(1, 90, (24 + 8 * d, 33)).astype(np.uint8)
           for d in range(2)]
STATE = model_state(TinyGPT(CFG))


def plan_with(slices: tuple, train: tuple[str, ...] = GROUPS) -> TrainingPlan:
    frozen = tuple(g for g in GROUPS if g not in train)
    return TrainingPlan(train, frozen, local_steps=3, batch_size=4, lr=0.05, slices=slices)


def test_index_choices_keep_floor_s_c_units() -> None:
    assert first_slice(CFG, 0.5) == Slice((0, 1), tuple(range(128)))
    assert first_slice(CFG, 0.01).heads == (0,)  # at least one of each
    rolled = rolling_slice(CFG, 0.25, offset=255)
    assert rolled.heads == (3,) and rolled.units == (*range(63), 255)  # wraps around
    drawn = random_slice(CFG, 0.25, np.random.default_rng(1))
    assert len(drawn.heads) == 1 and len(drawn.units) == 64
    assert list(drawn.units) == sorted(set(drawn.units))
    assert uniform(CFG, first_slice(CFG, 1.0)) == ()


def test_sub_model_is_the_global_model_sliced() -> None:
    part = Slice((1, 3), (5, 7, 200))
    plan = plan_with((("block.1", part),))
    model = model_for_plan(CFG, plan)
    load_state(model, STATE, plan)
    local = model_state(model)
    q = STATE["blocks.1.attn.q_proj.weight"]
    rows = [*range(16, 32), *range(48, 64)]
    np.testing.assert_array_equal(local["blocks.1.attn.q_proj.weight"], q[rows])
    np.testing.assert_array_equal(local["blocks.1.attn.o_proj.weight"],
                                  STATE["blocks.1.attn.o_proj.weight"][:, rows])
    np.testing.assert_array_equal(local["blocks.1.mlp.fc_in.bias"],
                                  STATE["blocks.1.mlp.fc_in.bias"][[5, 7, 200]])
    np.testing.assert_array_equal(local["blocks.1.mlp.fc_out.weight"],
                                  STATE["blocks.1.mlp.fc_out.weight"][:, [5, 7, 200]])
    np.testing.assert_array_equal(local["blocks.0.attn.q_proj.weight"],
                                  STATE["blocks.0.attn.q_proj.weight"])  # not sliced


def test_host_update_touches_only_the_kept_elements() -> None:
    part = random_slice(CFG, 0.25, np.random.default_rng(3))
    plan = plan_with(uniform(CFG, part))
    result = DeviceHost("t", CFG, WINDOWS).train(Job(0, 0, plan, 0, 1 << 30), STATE)
    assert result.status == "ok" and result.update is not None
    new = masked_mean(STATE, [result.update])
    key = "blocks.0.mlp.fc_in.weight"
    kept = np.zeros(CFG.ffn_size, bool)
    kept[list(part.units)] = True
    assert not np.array_equal(new[key][kept], STATE[key][kept])
    np.testing.assert_array_equal(new[key][~kept], STATE[key][~kept])
    fc_out = "blocks.0.mlp.fc_out.weight"
    np.testing.assert_array_equal(new[fc_out][:, ~kept], STATE[fc_out][:, ~kept])
    sent = sum(t.size for t in result.update.tensors.values())
    assert 4 * sent == upload_bytes(CFG, plan)


def test_two_devices_average_where_they_overlap() -> None:
    host = DeviceHost("t", CFG, WINDOWS)
    a = host.train(Job(0, 0, plan_with(uniform(CFG, Slice((0,), (0, 1)))), 0, 1 << 30),
                   STATE).update
    b = host.train(Job(1, 0, plan_with(uniform(CFG, Slice((0,), (1, 2)))), 1, 1 << 30),
                   STATE).update
    assert a is not None and b is not None
    new = masked_mean(STATE, [a, b])
    key = "blocks.1.mlp.fc_in.bias"
    ia, ib = (np.where(u.index[key][0] == 1)[0][0] for u in (a, b))
    both = (a.weight * a.tensors[key][ia] + b.weight * b.tensors[key][ib]) / (a.weight + b.weight)
    assert new[key][1] == pytest.approx(both)
    assert new[key][0] == pytest.approx(a.tensors[key][0])  # only a held unit 0


@pytest.mark.parametrize("model", ["gpt-2x64", "gpt-4x128"])
def test_mixed_width_peak_is_predicted(model: str) -> None:
    # an SLT configuration: block 0 frozen, block 1 trained at full width, the rest narrow
    config = ZOO[model].config
    groups = tuple(layer_groups(config.n_layer))
    narrow = tuple((f"block.{b}", first_slice(config, 0.3)) for b in range(2, config.n_layer))
    plan = TrainingPlan(groups[2:], groups[:2], 1, 6, 0.0, OptimizerSpec("sgd", 0.9),
                        slices=narrow)
    measured, _ = measure_step(config, plan, seq_len=40)
    assert predict_peak_bytes(config, plan, 40) == pytest.approx(measured, rel=0.10)
    whole = parse_plan("full", config, 6, OptimizerSpec("sgd", 0.9))
    assert predict_peak_bytes(config, plan, 40) < predict_peak_bytes(config, whole, 40)
