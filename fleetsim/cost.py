"""The cost model: FLOPs, bytes and predicted peak memory of a training plan.

Pure functions of (model config, plan, batch shape, optimizer); policies plan with them
and the clock turns them into durations. FLOPs are counted once per shape with
`torch.utils.flop_counter` on the meta device (no memory, no real compute) over the
exact forward/backward that a device runs, and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from fleetsim.model import TinyGPT, TinyGPTConfig, group_of, layer_groups
from fleetsim.types import OptimizerSpec, TrainingPlan

FLOAT_BYTES = 4  # weights and updates travel and live as float32


@dataclass(frozen=True)
class PlanCost:
    flops_per_step: float
    predicted_peak_bytes: int
    download_bytes: int
    upload_bytes: int


def estimate_cost(config: TinyGPTConfig, plan: TrainingPlan, seq_len: int) -> PlanCost:
    """Everything the clock and the policies need to know about one plan."""
    return PlanCost(
        flops_per_step=step_flops(config, plan.train, plan.frozen, plan.batch_size, seq_len),
        predicted_peak_bytes=predict_peak_bytes(config, plan, seq_len),
        download_bytes=group_bytes(config, (*plan.frozen, *plan.train)),
        upload_bytes=group_bytes(config, plan.train),
    )


def group_param_counts(config: TinyGPTConfig) -> dict[str, int]:
    """Parameters per layer group."""
    return dict(_group_param_counts(_config_key(config)))


def group_bytes(config: TinyGPTConfig, groups: tuple[str, ...]) -> int:
    counts = group_param_counts(config)
    return FLOAT_BYTES * sum(counts[g] for g in set(groups))


def predict_peak_bytes(config: TinyGPTConfig, plan: TrainingPlan, seq_len: int) -> int:
    """Peak bytes of one local step: resident weights, gradients and optimizer state of
    the trained groups, activations saved for backward from the first trained group on,
    and the largest transient buffer."""
    counts = group_param_counts(config)
    present = set(plan.train) | set(plan.frozen)
    weights = FLOAT_BYTES * sum(counts[g] for g in present)
    trainable = FLOAT_BYTES * sum(counts[g] for g in plan.train)
    optimizer_state = trainable * (1 + plan.optimizer.state_slots)  # grads + slots
    b, t, d = plan.batch_size, seq_len, config.n_embd
    groups = [g for g in layer_groups(config.n_layer) if g in present]
    first = min((groups.index(g) for g in plan.train), default=len(groups))
    grad_blocks = sum(1 for g in groups[first:] if g.startswith("block."))
    per_block = b * t * (10 * d + 2 * config.ffn_hidden) * FLOAT_BYTES
    logits = b * t * config.vocab_size * FLOAT_BYTES
    head = 2 * logits + b * t * d * FLOAT_BYTES  # logits, their gradient, final LN input
    transient = b * t * config.ffn_hidden * FLOAT_BYTES
    return int(weights + optimizer_state + grad_blocks * per_block + head + transient)


def step_flops(
    config: TinyGPTConfig,
    train: tuple[str, ...],
    frozen: tuple[str, ...],
    batch_size: int,
    seq_len: int,
) -> float:
    """FLOPs of one forward+backward step, counted by torch's flop counter."""
    return _step_flops(_config_key(config), tuple(sorted(train)), tuple(sorted(frozen)),
                       batch_size, seq_len)


def _config_key(config: TinyGPTConfig) -> tuple[int, ...]:
    return (config.vocab_size, config.max_seq_len, config.n_layer, config.n_embd,
            config.n_head, config.ffn_mult)


def _config_from_key(key: tuple[int, ...]) -> TinyGPTConfig:
    vocab, max_seq, n_layer, n_embd, n_head, ffn_mult = key
    return TinyGPTConfig(vocab_size=vocab, max_seq_len=max_seq, n_layer=n_layer,
                         n_embd=n_embd, n_head=n_head, ffn_mult=ffn_mult)


@lru_cache(maxsize=64)
def _group_param_counts(key: tuple[int, ...]) -> tuple[tuple[str, int], ...]:
    with torch.device("meta"):
        model = TinyGPT(_config_from_key(key))
    counts = dict.fromkeys(layer_groups(model.config.n_layer), 0)
    for name, param in model.state_dict().items():
        counts[group_of(name)] += param.numel()
    return tuple(counts.items())


@lru_cache(maxsize=1024)
def _step_flops(key: tuple[int, ...], train: tuple[str, ...], frozen: tuple[str, ...],
                batch_size: int, seq_len: int) -> float:
    from fleetsim.training import loss_of_step, prepare_model  # training imports cost

    with torch.device("meta"):
        model = TinyGPT(_config_from_key(key))
    plan = TrainingPlan(train=train, frozen=frozen, local_steps=1, batch_size=batch_size, lr=0.0)
    prepare_model(model, plan)
    tokens = torch.zeros(batch_size, seq_len + 1, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        loss = loss_of_step(model, plan, tokens)
        if loss.requires_grad:
            loss.backward()
    return float(counter.get_total_flops())


def optimizer_spec(name: str, momentum: float = 0.0, weight_decay: float = 0.0) -> OptimizerSpec:
    return OptimizerSpec(name=name, momentum=momentum, weight_decay=weight_decay)  # type: ignore[arg-type]
