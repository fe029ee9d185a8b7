"""The cost model: FLOPs counted on meta tensors, exact bytes, memory ordering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fleetsim.cost import estimate_cost, group_param_counts, predict_peak_bytes, step_flops
from fleetsim.model import ZOO, TinyGPT, layer_groups
from fleetsim.training import train_local
from fleetsim.types import OptimizerSpec, TrainingPlan

CFG = ZOO["gpt-2x64"].config
GROUPS = tuple(layer_groups(CFG.n_layer))
SGD = OptimizerSpec()


def plan(train: tuple[str, ...], frozen: tuple[str, ...] = (), batch: int = 4,
         optimizer: OptimizerSpec = SGD) -> TrainingPlan:
    return TrainingPlan(train=train, frozen=frozen, local_steps=3, batch_size=batch, lr=0.1,
                        optimizer=optimizer)


def test_group_counts_sum_to_model_parameters() -> None:
    model = TinyGPT(CFG)
    assert sum(group_param_counts(CFG).values()) == sum(p.numel() for p in model.parameters())


def test_bytes_are_exact_float32_sizes() -> None:
    counts = group_param_counts(CFG)
    cost = estimate_cost(CFG, plan(("head",), GROUPS[:-1]), seq_len=16)
    assert cost.upload_bytes == 4 * counts["head"]
    assert cost.download_bytes == 4 * sum(counts.values())


def test_flops_match_a_hand_count_for_the_head() -> None:
    # head only: forward of everything; backward through lm_head: its weight gradient and,
    # because ln_f's weights train too, the gradient of its input: two more matmuls
    b, t = 4, 16
    full_fwd = step_flops(CFG, (), GROUPS, b, t)
    head = step_flops(CFG, ("head",), GROUPS[:-1], b, t)
    lm_head_matmul = 2 * b * t * CFG.n_embd * CFG.vocab_size
    assert head - full_fwd == 2 * lm_head_matmul


def test_training_more_groups_costs_more() -> None:
    flops = [step_flops(CFG, GROUPS[-k:], GROUPS[:-k], 4, 16) for k in range(1, len(GROUPS))]
    assert flops == sorted(flops) and len(set(flops)) == len(flops)  # head, +1 block, ...
    mems = [predict_peak_bytes(CFG, plan(GROUPS[-k:], GROUPS[:-k]), 16)
            for k in range(1, len(GROUPS) + 1)]
    assert mems == sorted(mems)


def test_adam_needs_more_memory_than_sgd() -> None:
    sgd = predict_peak_bytes(CFG, plan(GROUPS), 16)
    adam = predict_peak_bytes(CFG, plan(GROUPS, optimizer=OptimizerSpec("adam")), 16)
    assert adam - sgd == 2 * 4 * sum(group_param_counts(CFG).values())


def test_measured_flops_equal_counted_flops() -> None:
    """What a host measures while training is what the clock was told."""
    torch.manual_seed(0)
    p = plan(GROUPS[-2:], GROUPS[:-2])
    windows = np.random.default_rng(0).integers(0, 90, (10, 17)).astype(np.uint8)
    _, measured = train_local(TinyGPT(CFG), p, windows, seed=0)
    assert measured == pytest.approx(3 * step_flops(CFG, p.train, p.frozen, 4, 16))
