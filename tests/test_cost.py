"""The cost model: FLOPs counted on meta tensors, exact bytes, and predicted peak memory
held to the measured peak over every zoo model x plan kind x optimizer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fleetsim.device.cost import (
    download_bytes,
    group_param_counts,
    parse_plan,
    predict_peak_bytes,
    step_flops,
    upload_bytes,
)
from fleetsim.device.training import measure_step, model_for_plan, train_local
from fleetsim.types import OptimizerSpec, TrainingDefaults, TrainingPlan
from fleetsim.zoo.model import ZOO, TinyGPT, TinyGPTConfig
from policies.slt import stage_plan
from tests.conftest import PEAK_TOLERANCE
from tests.test_policy_contract import FLEET

CFG = ZOO["gpt-2x64"].config
PLAN_KINDS = ("full", "last:1", "head", "lora:8", "width:0.5")
OPTIMIZERS = {"sgd": OptimizerSpec("sgd"), "momentum": OptimizerSpec("sgd", momentum=0.9),
              "adam": OptimizerSpec("adam")}
TOLERANCE = PEAK_TOLERANCE  # at batch 6, 40 characters the worst is 2.5% (lora:8)


@pytest.mark.parametrize("model", list(ZOO))
@pytest.mark.parametrize("spec", PLAN_KINDS)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_predicted_peak_within_tolerance_of_measured(model: str, spec: str,
                                                     optimizer: str) -> None:
    config = ZOO[model].config
    plan = parse_plan(spec, config, batch_size=6, optimizer=OPTIMIZERS[optimizer])
    measured, flops = measure_step(config, plan, seq_len=40)
    predicted = predict_peak_bytes(config, plan, seq_len=40)
    assert abs(predicted / measured - 1) <= TOLERANCE, (predicted, measured)
    assert flops == pytest.approx(step_flops(config, plan, seq_len=40))


RESIDUAL_TOLERANCE = 0.01  # residual-sliced plans (model.slice_residual): worst about 0.3%
# (width, tau, d): SLT configurations (blocks tau.. narrow, the last d of 0..tau-1 train);
# tau = 0 is a whole model at that width
RESIDUAL_CONFIGS = {"width:0.25": (0.25, 0, 0), "width:0.5": (0.5, 0, 0),
                    "slt:first": (0.25, 1, 1), "slt:last": (0.125, -1, 1),
                    "slt:deep": (0.5, -2, -2)}


def residual_plan(config: TinyGPTConfig, name: str, optimizer: OptimizerSpec) -> TrainingPlan:
    width, full, depth = RESIDUAL_CONFIGS[name]
    full, depth = full % config.n_layer, depth % config.n_layer if depth else 1
    if not full:
        return parse_plan(f"width:{width}", config, 6, optimizer, slice_residual=True)
    training = TrainingDefaults(1, None, 6, 0.0, optimizer, 40, slice_residual=True)
    return stage_plan(config, FLEET[0], training, width, full, depth)


@pytest.mark.parametrize(("model", "name", "optimizer"), [
    *((m, name, "momentum") for m in ("gpt-2x64", "gpt-8x64") for name in RESIDUAL_CONFIGS),
    ("gpt-4x128", "width:0.25", "adam"), ("gpt-4x128", "slt:last", "adam")])
def test_residual_sliced_peak_is_predicted(model: str, name: str, optimizer: str) -> None:
    config = ZOO[model].config
    plan = residual_plan(config, name, OPTIMIZERS[optimizer])
    assert plan.slices and all(p.residual for _, p in plan.slices)
    measured, flops = measure_step(config, plan, seq_len=40)
    predicted = predict_peak_bytes(config, plan, seq_len=40)
    assert abs(predicted / measured - 1) <= RESIDUAL_TOLERANCE, (predicted, measured)
    assert flops == pytest.approx(step_flops(config, plan, seq_len=40))


def test_residual_slicing_shrinks_every_cost() -> None:
    config = ZOO["gpt-8x64"].config
    kept = parse_plan("width:0.25", config, 6)
    cut = parse_plan("width:0.25", config, 6, slice_residual=True)
    assert cut.slices[0][1].residual == tuple(range(16))
    assert parse_plan("width:1", config, 6, slice_residual=True).slices == ()
    for cost in (upload_bytes, download_bytes):
        assert cost(config, cut) < cost(config, kept)
    assert 4 * sum(p.numel() for p in model_for_plan(config, cut).parameters()) == \
        download_bytes(config, cut) == upload_bytes(config, cut)
    assert step_flops(config, cut, 40) < step_flops(config, kept, 40)
    assert predict_peak_bytes(config, cut, 40) < predict_peak_bytes(config, kept, 40)


def test_group_counts_sum_to_model_parameters() -> None:
    for spec in PLAN_KINDS:
        plan = parse_plan(spec, CFG, batch_size=4)
        model = model_for_plan(CFG, plan)
        counted = sum(group_param_counts(CFG, plan).values())
        assert counted == sum(p.numel() for p in model.parameters()), spec


def test_bytes_are_exact_float32_sizes() -> None:
    counts = group_param_counts(CFG)
    head = parse_plan("head", CFG, 4)
    assert upload_bytes(CFG, head) == 4 * counts["head"]
    assert download_bytes(CFG, head) == 4 * sum(counts.values())
    lora = parse_plan("lora:4", CFG, 4)
    adapters = group_param_counts(CFG, lora)["lora"]
    assert adapters == CFG.n_layer * 2 * 4 * (CFG.n_embd + CFG.attn_size)  # q and v: A and B
    assert upload_bytes(CFG, lora) == 4 * (counts["head"] + adapters)
    narrow = parse_plan("width:0.5", CFG, 4)
    assert upload_bytes(CFG, narrow) < upload_bytes(CFG, parse_plan("full", CFG, 4))


def test_flops_match_a_hand_count_for_the_head() -> None:
    # head only: the forward of everything, then backward through lm_head: its weight
    # gradient and, because ln_f's weights train too, its input gradient: two matmuls
    b, t = 4, 16
    head = parse_plan("head", CFG, b)
    forward_only = replace(head, train=(), frozen=(*head.frozen, *head.train))
    lm_head_matmul = 2 * b * t * CFG.n_embd * CFG.vocab_size
    assert step_flops(CFG, head, t) - step_flops(CFG, forward_only, t) == 2 * lm_head_matmul


def test_training_more_blocks_costs_more() -> None:
    plans = [parse_plan(f"last:{n}", CFG, 4) for n in range(CFG.n_layer + 1)]
    flops = [step_flops(CFG, p, 16) for p in plans]
    mems = [predict_peak_bytes(CFG, p, 16) for p in plans]
    assert flops == sorted(flops) and len(set(flops)) == len(flops)
    assert mems == sorted(mems)


def test_adam_needs_two_slots_more_than_sgd() -> None:
    sgd = predict_peak_bytes(CFG, parse_plan("full", CFG, 4), 16)
    adam = predict_peak_bytes(CFG, parse_plan("full", CFG, 4, OPTIMIZERS["adam"]), 16)
    assert adam - sgd == 2 * 4 * sum(group_param_counts(CFG).values())


def test_measured_flops_equal_counted_flops() -> None:
    """What a host measures while training is what the clock was told."""
    torch.manual_seed(0)
    plan = parse_plan("last:1", CFG, 4, local_steps=3)
    windows = np.random.default_rng(0).integers(0, 90, (10, 17)).astype(np.uint8)
    _, measured = train_local(TinyGPT(CFG), plan, windows, seed=0)
    assert measured == pytest.approx(3 * step_flops(CFG, plan, 16))


@pytest.mark.parametrize("spec", ["", "last", "last:9", "lora:0", "width:0", "width:1.5",
                                  "width:x", "head:2", "fullx"])
def test_bad_plan_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="bad plan"):
        parse_plan(spec, CFG, 4)


def test_cost_command_prints_one_json_object(capsys: pytest.CaptureFixture) -> None:
    import json

    from fleetsim.cli import main

    assert main(["cost", "--model", "gpt-2x64", "--plan", "last:1", "--batch", "4",
                 "--seq", "16", "--optimizer", "adam"]) == 0
    result = json.loads(capsys.readouterr().out)
    plan = parse_plan("last:1", CFG, 4, OPTIMIZERS["adam"])
    assert result["predicted_peak_bytes"] == predict_peak_bytes(CFG, plan, 16)
    assert abs(result["measured_peak_bytes"] / result["predicted_peak_bytes"] - 1) < TOLERANCE
    assert result["flops_per_step"] == step_flops(CFG, plan, 16)
    assert result["upload_bytes"] == upload_bytes(CFG, plan)
    assert result["download_bytes"] == download_bytes(CFG, plan)


@pytest.mark.parametrize("args", [["--model", "gpt-9x9", "--plan", "full"],
                                  ["--model", "gpt-2x64", "--plan", "lora:x"],
                                  ["--model", "gpt-2x64", "--plan", "full", "--seq", "500"]])
def test_cost_command_bad_input(args: list[str], capsys: pytest.CaptureFixture) -> None:
    from fleetsim.cli import main

    assert main(["cost", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fleetsim: fleetsim cost: --")
