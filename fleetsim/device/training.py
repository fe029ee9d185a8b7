"""Local training of one plan on one device's data: the step every host runs.

The same `loss_of_step` is what the cost model counts FLOPs on, so the clock's compute
time and the real training are of one and the same computation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fleetsim.device.lora import adapter_index, global_key
from fleetsim.device.submodel import Index, slice_index
from fleetsim.types import ModelState, TrainingPlan
from fleetsim.zoo.model import (
    EMBED,
    HEAD,
    TinyGPT,
    TinyGPTConfig,
    block_number,
    block_of,
    group_of,
    layer_groups,
    sub_config,
)


def model_for_plan(config: TinyGPTConfig, plan: TrainingPlan) -> TinyGPT:
    """A fresh model shaped for the plan: the sub-model its slices keep, with peft's LoRA
    adapters injected for a LoRA plan. Built on the current default device."""
    model = TinyGPT(sub_config(config, plan.slices))
    if plan.lora is not None:
        from peft import LoraConfig, inject_adapter_in_model  # 1.3 s and 100 MB: LoRA only

        spec = plan.lora
        lora = LoraConfig(r=spec.rank, lora_alpha=spec.scale * spec.rank,
                          target_modules=list(spec.targets), lora_dropout=0.0)
        inject_adapter_in_model(lora, model)
    return model


def prepare_model(model: TinyGPT, plan: TrainingPlan) -> None:
    """Only the plan's trained groups (and LoRA adapters) require gradients."""
    trained = set(plan.train)
    for name, param in model.named_parameters():
        param.requires_grad_(group_of(name) in trained or "lora_" in name)


def loss_of_step(model: TinyGPT, plan: TrainingPlan, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-character loss of a batch of windows (batch, seq_len + 1).

    Groups before the first trained one run under no_grad (nothing is saved for backward);
    left-out blocks are skipped (identity)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    groups = present_groups(plan, model.config.n_layer)
    first_trained = first_grad_group(plan, groups)
    x: torch.Tensor | None = None
    for i, group in enumerate(groups):
        with torch.set_grad_enabled(i >= first_trained):
            x = _run_group(model, group, inputs if x is None else x)
    assert x is not None
    return F.cross_entropy(x.flatten(0, 1), targets.flatten())


def present_groups(plan: TrainingPlan, n_layer: int) -> list[str]:
    """The groups a plan runs, in forward order."""
    present = set(plan.train) | set(plan.frozen)
    return [g for g in layer_groups(n_layer) if g in present]


def first_grad_group(plan: TrainingPlan, groups: list[str]) -> int:
    """Index of the first group that needs gradients: the first trained group, or the
    first block when LoRA adapters sit in every block. Everything before runs no_grad."""
    starts = [groups.index(g) for g in plan.train]
    if plan.lora is not None:
        starts += [i for i, g in enumerate(groups) if block_of(g) is not None][:1]
    return min(starts, default=len(groups))


def _run_group(model: TinyGPT, group: str, x: torch.Tensor) -> torch.Tensor:
    if group == EMBED:
        pos = torch.arange(x.shape[1], device=x.device)
        return model.wte(x) + model.wpe(pos)
    if group == HEAD:
        return model.lm_head(model.ln_f(x))
    return model.blocks[block_number(group)](x)


def make_optimizer(model: TinyGPT, plan: TrainingPlan) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    spec = plan.optimizer
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=plan.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=plan.lr, momentum=spec.momentum,
                           weight_decay=spec.weight_decay)


# A step's allocations repeat exactly once the optimizer state exists (same ops, same
# shapes), so metering the first two steps enforces the cap for all of them.
METERED_STEPS = 2


def train_local(model: TinyGPT, plan: TrainingPlan, windows: np.ndarray, seed: int,
                meter: AbstractContextManager[Any] | None = None,
                flops_per_step: float | None = None) -> tuple[float, float]:
    """Run the plan's local steps on `windows` (n, seq_len + 1).

    Returns (mean loss, FLOPs). Batches are drawn by a generator seeded per device and
    round, so the result does not depend on which host runs it. FLOPs are counted by
    torch's flop counter on the first step (every step has the same shapes) and scaled,
    unless `flops_per_step` says what an earlier count of the same shapes found.
    `meter` (a MemoryMeter) is active over the first METERED_STEPS steps, which keeps its
    dispatch overhead off the rest."""
    prepare_model(model, plan)
    model.train()
    optimizer = make_optimizer(model, plan)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    data = torch.from_numpy(windows.astype(np.int64)).to(device)
    total, step_flops = 0.0, flops_per_step or 0.0
    count = flops_per_step is None
    for step in range(plan.local_steps):
        with meter if meter is not None and step < METERED_STEPS else nullcontext():
            batch = data[rng.integers(0, len(data), size=plan.batch_size)]
            optimizer.zero_grad(set_to_none=True)  # free last step's gradients first
            counting = count and step == 0
            with FlopCounterMode(display=False) if counting else nullcontext() as counter:
                loss = loss_of_step(model, plan, batch)
                loss.backward()
            if counter is not None:
                step_flops = counter.get_total_flops()
            optimizer.step()
        total += loss.item()
    return total / plan.local_steps, float(step_flops * plan.local_steps)


def tensor_index(name: str, plan: TrainingPlan, config: TinyGPTConfig) -> Index | None:
    """Where the plan's model holds a part of global tensor `name` (None: the whole)."""
    if plan.lora is not None and "lora_" in name:
        return adapter_index(name, plan.lora.rank)
    return slice_index(name, plan.slices, config)


def load_state(model: TinyGPT, state: ModelState, plan: TrainingPlan) -> None:
    """Copy a global state into the plan's model in place: sliced to its sub-model and
    its adapter rank."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            name = global_key(key)
            where = tensor_index(name, plan, model.config)
            source = np.asarray(state[name]) if where is None else state[name][where]
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(source)).to(tensor.device))


def export_update(model: TinyGPT, plan: TrainingPlan
                  ) -> tuple[dict[str, np.ndarray], dict[str, Index]]:
    """What a device uploads: the trained groups and its adapters, as float32 copies
    under their global names, with where each part sits in the global tensor."""
    wanted = set(plan.train)
    tensors, index = {}, {}
    for key, tensor in model.state_dict().items():
        name = global_key(key)
        if group_of(name) in wanted or "lora_" in name:
            tensors[name] = tensor.detach().cpu().numpy().copy()
            where = tensor_index(name, plan, model.config)
            if where is not None:
                index[name] = where
    return tensors, index


def model_state(model: TinyGPT) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def scratch_state(config: TinyGPTConfig, seed: int) -> dict[str, np.ndarray]:
    """A randomly initialised model's weights (TinyGPT's own initialisation), the same
    for the same seed; torch's global generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_state(TinyGPT(config))


@torch.no_grad()
def evaluate(model: TinyGPT, windows: np.ndarray, batch_size: int = 64) -> dict[str, float]:
    """Next-character predictions over every position of `windows`, as sums that add up
    across parts: correct predictions, positions, and the summed loss."""
    model.eval()
    correct = positions = 0
    loss_sum = 0.0
    for start in range(0, len(windows), batch_size):
        tokens = torch.from_numpy(windows[start:start + batch_size].astype(np.int64))
        tokens = tokens.to(next(model.parameters()).device)
        logits = model(tokens[:, :-1]).logits
        targets = tokens[:, 1:]
        loss_sum += F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                    reduction="sum").item()
        correct += int((logits.argmax(-1) == targets).sum())
        positions += targets.numel()
    return {"correct": correct, "positions": positions, "loss_sum": loss_sum}


def accuracy_and_loss(parts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Accuracy and mean loss per position from `evaluate`'s sums over parts (in order)."""
    positions = max(sum(p["positions"] for p in parts), 1)
    return {"accuracy": sum(p["correct"] for p in parts) / positions,
            "loss": sum(p["loss_sum"] for p in parts) / positions}


def measure_step(config: TinyGPTConfig, plan: TrainingPlan, seq_len: int,
                 steps: int = 2) -> tuple[int, float]:
    """Measured (peak live bytes, FLOPs per step) of the plan on random tokens: `steps`
    steps so the optimizer state is there, as it is in a device's later steps."""
    from fleetsim.device.memory import MemoryMeter

    torch.manual_seed(0)
    model = model_for_plan(config, plan)
    windows = np.random.default_rng(0).integers(0, config.vocab_size,
                                                (plan.batch_size, seq_len + 1))
    meter = MemoryMeter(resident=model.state_dict().values())
    _, flops = train_local(model, replace(plan, local_steps=steps), windows.astype(np.uint8),
                           seed=0, meter=meter)
    return meter.peak_bytes, flops / steps
