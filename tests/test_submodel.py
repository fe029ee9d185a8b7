"""Width-reduced sub-models: slicing the global tensors, training on a host, putting
the update back with the masked mean, and the cost model of mixed-width plans."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fleetsim.device.cost import parse_plan, predict_peak_bytes, upload_bytes
from fleetsim.device.submodel import (
    first_slice,
    random_slice,
    residual_problem,
    rolling_slice,
    uniform,
)
from fleetsim.device.training import load_state, measure_step, model_for_plan, model_state
from fleetsim.runtime.aggregate import masked_mean
from fleetsim.runtime.workers import DeviceHost, Job
from fleetsim.types import OptimizerSpec, Slice, TrainingPlan
from fleetsim.zoo.model import ZOO, TinyGPT, TinyGPTConfig, layer_groups

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
    # one update: the kept rows (in the order of part.units, sorted) are what it sent
    assert list(part.units) == sorted(part.units)
    np.testing.assert_allclose(new[key][kept], result.update.tensors[key], rtol=1e-6)
    assert not np.array_equal(result.update.tensors[key], STATE[key][kept])  # it trained
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


# Residual slicing: the sub-model narrows the residual width too (model.slice_residual).
QUARTER = first_slice(CFG, 0.25, residual=True)  # 1 head, 64 units, 16 of 64 channels


def test_residual_slice_narrows_every_tensor_it_touches() -> None:
    assert QUARTER.residual == tuple(range(16)) and first_slice(CFG, 1.0, True).residual == ()
    shapes = {k: tuple(v.shape) for k, v in
              model_for_plan(CFG, plan_with(uniform(CFG, QUARTER))).state_dict().items()}
    assert shapes["wte.weight"] == (CFG.vocab_size, 16) and shapes["wpe.weight"] == (128, 16)
    assert shapes["blocks.1.ln1.weight"] == shapes["blocks.1.ln2.bias"] == (16,)
    assert shapes["blocks.1.attn.q_proj.weight"] == (16, 16)  # one head of 16 x 16 channels
    assert shapes["blocks.1.attn.o_proj.weight"] == (16, 16)
    assert shapes["blocks.1.attn.o_proj.bias"] == shapes["blocks.1.mlp.fc_out.bias"] == (16,)
    assert shapes["blocks.1.mlp.fc_in.weight"] == (64, 16)
    assert shapes["blocks.1.mlp.fc_out.weight"] == (16, 64)
    assert shapes["ln_f.weight"] == (16,) and shapes["lm_head.weight"] == (CFG.vocab_size, 16)


def test_a_full_width_stream_is_cut_where_it_meets_a_narrow_block() -> None:
    # SLT's configuration: block 0 full width, block 1 and the head narrow
    plan = plan_with((("block.1", QUARTER),))
    model = model_for_plan(CFG, plan)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["wte.weight"] == (CFG.vocab_size, 64)  # the first block is whole
    assert shapes["blocks.0.ln2.weight"] == (64,) and shapes["blocks.1.ln1.weight"] == (16,)
    assert shapes["lm_head.weight"] == (CFG.vocab_size, 16)
    load_state(model, STATE, plan)
    # the narrow block sees the first 16 channels of block 0's output
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[1](x), model.blocks[1](x[..., :16]))
    with pytest.raises(ValueError, match="only narrow"):
        TinyGPTConfig(n_layer=2, n_embd=64, block_residual=[16, 64])


def test_residual_sliced_sub_model_is_the_global_model_sliced() -> None:
    rng = np.random.default_rng(7)
    channels = tuple(int(c) for c in np.sort(rng.choice(64, 24, replace=False)))
    part = Slice((1, 3), (5, 7, 200), channels)
    plan = plan_with(uniform(CFG, part))
    model = model_for_plan(CFG, plan)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in STATE.items()}
    load_state(model, state, plan)
    local, c = model_state(model), list(channels)
    rows = [*range(16, 32), *range(48, 64)]
    expect = {
        "wte.weight": state["wte.weight"][:, c],
        "wpe.weight": state["wpe.weight"][:, c],
        "blocks.1.ln1.weight": state["blocks.1.ln1.weight"][c],
        "blocks.1.ln2.bias": state["blocks.1.ln2.bias"][c],
        "blocks.1.attn.q_proj.weight": state["blocks.1.attn.q_proj.weight"][rows][:, c],
        "blocks.1.attn.v_proj.bias": state["blocks.1.attn.v_proj.bias"][rows],
        "blocks.1.attn.o_proj.weight": state["blocks.1.attn.o_proj.weight"][c][:, rows],
        "blocks.1.attn.o_proj.bias": state["blocks.1.attn.o_proj.bias"][c],
        "blocks.0.mlp.fc_in.weight": state["blocks.0.mlp.fc_in.weight"][[5, 7, 200]][:, c],
        "blocks.0.mlp.fc_in.bias": state["blocks.0.mlp.fc_in.bias"][[5, 7, 200]],
        "blocks.0.mlp.fc_out.weight": state["blocks.0.mlp.fc_out.weight"][c][:, [5, 7, 200]],
        "blocks.0.mlp.fc_out.bias": state["blocks.0.mlp.fc_out.bias"][c],
        "ln_f.weight": state["ln_f.weight"][c],
        "lm_head.weight": state["lm_head.weight"][:, c],
    }
    for name, want in expect.items():
        np.testing.assert_array_equal(local[name], want, err_msg=name)


def test_residual_sliced_updates_average_where_they_overlap() -> None:
    # two devices: channels 0..15 and a window 8..23; both run under a cap 5% above
    # the predicted peak, and the measured peak is within 5% of it
    host = DeviceHost("t", CFG, WINDOWS)
    updates = []
    for device, part in enumerate([QUARTER, replace(rolling_slice(CFG, 0.25, 8),
                                                    residual=tuple(range(8, 24)))]):
        plan = plan_with(uniform(CFG, part))
        predicted = predict_peak_bytes(CFG, plan, 32)
        result = host.train(Job(device, 0, plan, device, int(1.05 * predicted)), STATE)
        assert result.status == "ok" and result.update is not None
        assert abs(result.peak_mem_bytes / predicted - 1) <= 0.05
        assert 4 * sum(t.size for t in result.update.tensors.values()) == \
            upload_bytes(CFG, plan)
        updates.append(result.update)
    a, b = updates
    new = masked_mean(STATE, updates)
    both = (a.weight * a.tensors["ln_f.weight"][10] + b.weight * b.tensors["ln_f.weight"][2]
            ) / (a.weight + b.weight)
    assert new["ln_f.weight"][10] == pytest.approx(both)  # channel 10: local 10 and 2
    assert new["ln_f.weight"][3] == pytest.approx(a.tensors["ln_f.weight"][3])  # a only
    assert new["ln_f.weight"][40] == STATE["ln_f.weight"][40]  # nobody's
    wte = (a.weight * a.tensors["wte.weight"][:, 12] + b.weight * b.tensors["wte.weight"][:, 4]
           ) / (a.weight + b.weight)
    np.testing.assert_allclose(new["wte.weight"][:, 12], wte, rtol=1e-6)
    np.testing.assert_array_equal(new["wte.weight"][:, 30:], STATE["wte.weight"][:, 30:])
    fc = "blocks.0.mlp.fc_in.weight"  # a: units 0..63; b: units 8..71; channels as above
    np.testing.assert_array_equal(new[fc][:, 30:], STATE[fc][:, 30:])
    assert new[fc][100, 12] == STATE[fc][100, 12]


@pytest.mark.parametrize(("residuals", "problem"), [
    ([(), tuple(range(16))], ""),  # SLT: full, then cut to the first 16
    ([tuple(range(8, 24))] * 2, ""),  # a uniform window (FedRolex)
    ([tuple(range(16)), ()], "widens"),
    ([tuple(range(16)), tuple(range(1, 9))], "reorders"),
    ([(), tuple(range(8, 24))], "reorders"),  # a full stream is cut to its first channels
    ([(3, 1), (3, 1)], "bad indices"),
    ([(0, 64), (0, 64)], "bad indices"),
])
def test_residual_channels_can_only_be_cut(residuals: list[tuple[int, ...]],
                                           problem: str) -> None:
    slices = tuple((f"block.{b}", Slice((0,), (0,), r)) for b, r in enumerate(residuals))
    found = residual_problem(slices, CFG)
    assert (problem in found) if problem else found == ""
