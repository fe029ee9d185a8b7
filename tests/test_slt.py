"""SLT: the configuration table, the round schedule and the plans, as properties over
zoo models, memory constraints and run lengths; and the width baselines' choices."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetsim.device.cost import parse_plan, predict_peak_bytes
from fleetsim.types import DeviceState, SetupContext
from fleetsim.zoo.model import ZOO
from policies import create_policy
from policies.slt import configuration_table, head_slices, schedule, stage_plan
from tests.test_policy_contract import FLEET, TRAINING, round_context

MODELS = ["gpt-2x64", "gpt-4x128", "gpt-6x192"]


def device_at_width(model: str, width: float, device_id: int = 0,
                    residual: bool = False) -> DeviceState:
    """A device whose memory is that of training the whole model at `width` (its
    residual sliced too with `residual`): the constraint as the SLT paper sets it."""
    config = ZOO[model].config
    plan = parse_plan(f"width:{width}", config, TRAINING.batch_size, TRAINING.optimizer,
                      slice_residual=residual)
    cap = predict_peak_bytes(config, plan, TRAINING.seq_len)
    return replace(FLEET[0], device_id=device_id, memory_bytes=cap)


@settings(max_examples=25)
@given(model=st.sampled_from(MODELS), width=st.floats(0.05, 1.0),
       rounds=st.integers(1, 400))
def test_table_and_schedule(model: str, width: float, rounds: int) -> None:
    config = ZOO[model].config
    weakest = device_at_width(model, width)
    table = configuration_table(config, weakest, TRAINING)
    widths = [s for s, _ in table]
    assert widths == sorted(widths), "s never decreases as tau grows"
    assert [t for _, t in table] == sorted({t for _, t in table})
    assert all(0 < s <= 1 for s in widths) and widths.count(1.0) <= 1
    assert 1.0 not in widths[:-1], "the table ends at the first s = 1"
    if not table:
        return
    stages = schedule(config, table, rounds, weakest, TRAINING)
    covered = [r for stage in stages for r in range(stage.start, stage.end)]
    assert covered == list(range(rounds)), "every round exactly once, in order"
    stage0 = int(table[0][0] * rounds)  # the whole network at s_1 for floor(s_1 * R) rounds
    if stage0:
        assert (stages[0].full, stages[0].start, stages[0].end) == (0, 0, stage0)
    else:  # stage 0 gets no rounds: dropped
        assert (stages[0].width, stages[0].full) in table
    assert stages[-1].end == rounds and (stages[-1].width, stages[-1].full) in table + [
        (stages[0].width, 0)]


@settings(max_examples=12)
@given(model=st.sampled_from(MODELS), width=st.sampled_from([0.125, 0.25, 0.5]),
       rounds=st.integers(4, 60), stronger=st.floats(1.0, 3.0))
def test_every_plan_fits_and_stronger_devices_train_deeper(model: str, width: float,
                                                          rounds: int,
                                                          stronger: float) -> None:
    weak = device_at_width(model, width, 0)
    strong = replace(weak, device_id=1, memory_bytes=int(weak.memory_bytes * stronger))
    policy = create_policy("slt", {})
    policy.setup(SetupContext((weak, strong), model, TRAINING, 120.0, rounds))
    config = ZOO[model].config
    for r in range(rounds):
        ctx = replace(round_context(model), round=r, total_rounds=rounds,
                      devices=(weak, strong))
        plans = policy.plan_round(ctx)
        for device in (weak, strong):
            if device.device_id in plans:
                peak = predict_peak_bytes(config, plans[device.device_id], TRAINING.seq_len)
                assert peak <= device.memory_bytes
        assert 1 in plans or 0 not in plans, "a stronger device trains whenever a weak one does"
        if 0 in plans:
            assert len(plans[1].train) >= len(plans[0].train)
            assert plans[1].slices == plans[0].slices, "the same narrow head"
            assert policy.evaluated_slices(r) == plans[0].slices


def test_homogeneous_half_width_walks_gpt_4x128_to_full_width() -> None:
    model = "gpt-4x128"
    weakest = device_at_width(model, 0.5)
    policy = create_policy("slt", {})
    policy.setup(SetupContext((weakest,), model, TRAINING, 120.0, 100))
    fulls = [s.full for s in policy.stages]
    assert fulls == sorted(fulls) and fulls[0] == 0 and policy.stages[-1].width == 1.0
    assert policy.evaluated_slices(99) == ()  # the last configuration is full width
    stage0 = policy.stages[0]  # the whole network, narrow
    assert stage0.width < 1 and policy.evaluated_slices(-1) == head_slices(
        ZOO[model].config, stage0.width, 0)


def test_width_baselines_pick_their_units() -> None:
    ctx = round_context("gpt-4x128")
    config = ctx.model.config
    heterofl = create_policy("heterofl", {}).plan_round(ctx)
    rolex = create_policy("fedrolex", {}).plan_round(ctx)
    dropout = create_policy("feddropout", {}).plan_round(ctx)
    assert set(heterofl) == set(rolex) == set(dropout)
    narrow = [d for d, p in heterofl.items() if p.slices]
    assert narrow, "some device of the test fleet trains a sub-model"
    for d in narrow:
        first = dict(heterofl[d].slices)["block.0"]
        rolled = dict(rolex[d].slices)["block.0"]
        assert first.units == tuple(range(len(first.units)))
        assert rolled.units == tuple(range(ctx.round, ctx.round + len(first.units)))
    drawn = [dict(dropout[d].slices)[f"block.{b}"].units for d in narrow
             for b in range(config.n_layer)]
    assert len(set(drawn)) == len(drawn), "drawn per device and block"
    assert np.all([p.train == ctx.model.groups for p in heterofl.values()])


def test_residual_slicing_lets_slt_walk_gpt_8x64_in_many_steps() -> None:
    model, sliced = "gpt-8x64", replace(TRAINING, slice_residual=True)
    config = ZOO[model].config
    weakest = device_at_width(model, 0.25, residual=True)
    table = configuration_table(config, weakest, sliced)
    assert len(table) >= 6, table
    assert len(configuration_table(config, weakest, TRAINING)) < len(table)  # same memory
    for width, full in table:
        plan = stage_plan(config, weakest, sliced, width, full, 1)
        assert predict_peak_bytes(config, plan, TRAINING.seq_len) <= weakest.memory_bytes
        assert [g for g, _ in plan.slices] == [f"block.{b}" for b in range(full, 8)]
        assert all(len(p.residual) == max(1, int(width * 64)) for _, p in plan.slices)
    policy = create_policy("slt", {})
    policy.setup(SetupContext((weakest,), model, sliced, 120.0, 60))
    assert len(policy.stages) == len(table) + 1
    stage0 = dict(policy.evaluated_slices(-1))
    assert stage0["block.0"].residual  # stage 0: every block, hence the embeddings, narrow
    assert "block.0" not in dict(policy.evaluated_slices(59))


def test_width_baselines_pick_their_residual_channels() -> None:
    ctx = replace(round_context("gpt-4x128"), training=replace(TRAINING, slice_residual=True))
    plans = {name: create_policy(name, {}).plan_round(ctx)
             for name in ("heterofl", "fedrolex", "feddropout")}
    narrow = [d for d, p in plans["heterofl"].items() if p.slices]
    assert narrow and set(plans["heterofl"]) == set(plans["fedrolex"]) == set(plans["feddropout"])
    drawn = []
    for d in narrow:
        kept = {name: {p.residual for _, p in plans[name][d].slices} for name in plans}
        assert all(len(channels) == 1 for channels in kept.values()), "one stream, every block"
        first, rolled, random = (next(iter(kept[n])) for n in plans)
        assert first == tuple(range(len(first))) and len(first) < 128
        assert rolled == tuple(range(ctx.round, ctx.round + len(first)))
        assert len(random) == len(first)
        drawn.append(random)
    assert len(set(drawn)) == len(drawn), "drawn per device"
