"""The cost model: FLOPs, bytes and predicted peak memory of a training plan.

Pure functions of (model config, plan, sequence length); policies plan with them and the
clock turns them into durations. FLOPs are counted once per shape with
`torch.utils.flop_counter` on the meta device (no memory, no real compute) over the
exact step a device runs. Peak memory is an analytic model of that step (see
`predict_peak_bytes`), held to the measured peak by tests over the whole zoo.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from fleetsim.device.submodel import first_slice, shape_of, uniform
from fleetsim.device.training import first_grad_group, loss_of_step, model_for_plan, prepare_model
from fleetsim.types import LoraSpec, OptimizerSpec, Slices, TrainingPlan
from fleetsim.zoo.model import (
    TinyGPTConfig,
    block_group,
    block_of,
    group_of,
    layer_groups,
    sub_config,
)

FLOAT_BYTES = 4  # weights, updates and activations are float32


@dataclass(frozen=True)
class PlanCost:
    flops_per_step: float
    predicted_peak_bytes: int
    download_bytes: int
    upload_bytes: int


def estimate_cost(config: TinyGPTConfig, plan: TrainingPlan, seq_len: int) -> PlanCost:
    """Everything the clock and the policies need to know about one plan."""
    return PlanCost(
        flops_per_step=step_flops(config, plan, seq_len),
        predicted_peak_bytes=predict_peak_bytes(config, plan, seq_len),
        download_bytes=download_bytes(config, plan),
        upload_bytes=upload_bytes(config, plan),
    )


def group_param_counts(config: TinyGPTConfig, plan: TrainingPlan | None = None
                       ) -> dict[str, int]:
    """Parameters per layer group of the model a plan trains (LoRA adapters under "lora")."""
    slices, lora = (shape_of(plan.slices), plan.lora) if plan else ((), None)
    return dict(_param_counts(_config_key(config), slices, lora))


def download_bytes(config: TinyGPTConfig, plan: TrainingPlan) -> int:
    """What the device needs: every group it runs (at its width) and the adapters."""
    counts = group_param_counts(config, plan)
    groups = {*plan.train, *plan.frozen}
    return FLOAT_BYTES * (sum(counts[g] for g in groups) + counts["lora"])


def upload_bytes(config: TinyGPTConfig, plan: TrainingPlan) -> int:
    """Only what changed: the trained groups and the adapters."""
    return FLOAT_BYTES * _trainable_params(group_param_counts(config, plan), plan)


def _trainable_params(counts: dict[str, int], plan: TrainingPlan) -> int:
    return sum(counts[g] for g in set(plan.train)) + counts["lora"]


def predict_peak_bytes(config: TinyGPTConfig, plan: TrainingPlan, seq_len: int) -> int:
    """Peak live bytes of a steady-state local step (optimizer state already allocated);
    cached per plan shape (policies ask for the same shapes again and again)."""
    slots = OptimizerSpec("adam") if plan.optimizer.state_slots == 2 else \
        OptimizerSpec("sgd", momentum=0.5 * plan.optimizer.state_slots)
    return _peak_bytes(_config_key(config), plan_shape(plan, slots), seq_len)


@lru_cache(maxsize=4096)
def _peak_bytes(key: tuple[int, ...], plan: TrainingPlan, seq_len: int) -> int:
    """The model behind `predict_peak_bytes`: resident weights + optimizer slots of the
    trainable parameters + the largest activation moment (`_frozen_moments`,
    `_backward_moments`) + a few small tensors. Every width is the sub-model's: a
    block's residual width, heads and units, the head's input width."""
    config = _config_from_key(key)
    cfg = sub_config(config, plan.slices)
    counts = group_param_counts(config, plan)
    groups = [g for g in layer_groups(cfg.n_layer) if g in {*plan.train, *plan.frozen}]
    weights = FLOAT_BYTES * (sum(counts[g] for g in groups) + counts["lora"])
    trainable = FLOAT_BYTES * _trainable_params(counts, plan)
    first = first_grad_group(plan, groups)
    frozen = [b for b in map(block_of, groups[:first]) if b is not None]
    moments = _frozen_moments(cfg, frozen, plan.batch_size, seq_len)
    moments += _backward_moments(cfg, plan, counts, groups[first:], seq_len)
    small = 8 * plan.batch_size + 64  # the batch's row indices (int64) and a few scalars
    return int(weights + plan.optimizer.state_slots * trainable + max(moments) + small)


def _frozen_moments(cfg: TinyGPTConfig, blocks: list[int], batch: int, t: int) -> list[int]:
    """Per no_grad block of the frozen prefix, its largest transient: in attention its
    input, LN out, q, k, v, the contiguous q and k and two score tensors (and the mask
    being built); in the FFN its input, the mid-block stream, LN out, the FFN's input
    and output. A block narrower than its input also holds its cut copy."""
    per_token = batch * t * FLOAT_BYTES
    moments = [0]
    for b in blocks:
        d, heads, ffn = cfg.block_residual[b], cfg.block_heads[b], cfg.block_units[b]
        wide = cfg.block_residual[max(b - 1, 0)]
        cut = wide if wide > d else 0
        moments.append((cut + 2 * d + 5 * heads * cfg.head_size + 2 * heads * t)
                       * per_token + 2 * t * t)  # the mask being built: ones, triangle
        moments.append((wide + 2 * d + 2 * ffn) * per_token)
    return moments


def _backward_moments(cfg: TinyGPTConfig, plan: TrainingPlan, counts: dict[str, int],
                      grad_groups: list[str], t: int) -> list[int]:
    """The moments of a step in grad mode, holding what the blocks in grad mode (with
    their t x t causal masks) and the head saved for backward and not yet freed:
      - the loss's backward at the head (two V-wide), everything saved;
      - per block, from the last: its FFN backward (the head's and the later blocks'
        activations freed), holding its output's and its FFN output's gradients and
        the weight gradients so far (the head's, the later blocks', its fc_out's);
      - then its softmax backward (its FFN side freed too), holding the gradients of
        the probabilities, the scores, v and (unless nothing before needs it) the
        residual stream, and its o_proj, LN2 and FFN weight gradients."""
    per_token = plan.batch_size * t * FLOAT_BYTES  # bytes of one float per token
    blocks = [b for b in map(block_of, grad_groups) if b is not None]
    saved_by = [_block_saved(cfg, b, plan, block_group(b) in plan.train, t) for b in blocks]
    head_saved = 2 * cfg.head_width + cfg.vocab_size + 4
    base = 2 * per_token + (8 * t if "embed" in grad_groups else 0)  # token, position ids
    saved = base + (sum(saved_by) + head_saved) * per_token + len(blocks) * t * t  # + masks
    moments = [saved + 2 * cfg.vocab_size * per_token]  # the loss's backward
    grads = FLOAT_BYTES * counts["head"] if "head" in plan.train else 0
    for i in range(len(blocks) - 1, -1, -1):
        b, trained = blocks[i], block_group(blocks[i]) in plan.train
        d, ffn = cfg.block_residual[b], cfg.block_units[b]
        inner, scores = cfg.block_heads[b] * cfg.head_size, cfg.block_heads[b] * t
        held = base + sum(saved_by[:i + 1]) * per_token + (i + 1) * t * t
        fc_out = FLOAT_BYTES * (ffn * d + d) if trained else 0
        moments.append(held + (d + ffn) * per_token + grads + fc_out)
        later = FLOAT_BYTES * (inner * d + 2 * d * ffn + ffn + 4 * d) if trained else 0
        stream = d if i > 0 or "embed" in grad_groups else 0  # the residual's gradient
        attention = 2 * scores + inner + stream - _ffn_side(cfg, b, plan, trained)
        moments.append(held + attention * per_token + grads + later)
        grads += FLOAT_BYTES * counts[block_group(b)] if trained else 0
    return moments


def _ffn_side(cfg: TinyGPTConfig, block: int, plan: TrainingPlan, trained: bool) -> int:
    """Floats per token of a block's saved activations freed before its softmax
    backward: LN2's input and statistics, the FFN's, o_proj's inputs and the copy of v."""
    d, ffn = cfg.block_residual[block], cfg.block_units[block]
    inner = cfg.block_heads[block] * cfg.head_size
    targets = set(plan.lora.targets) if plan.lora else set()
    floats = d + 2 + ffn + inner
    floats += d if trained or "fc_in" in targets else 0
    floats += ffn if trained or "fc_out" in targets else 0
    return floats + (inner if trained or "o_proj" in targets else 0)


def _block_saved(cfg: TinyGPTConfig, block: int, plan: TrainingPlan, trained: bool,
                 t: int) -> int:
    """Floats per token a block in grad mode saves for backward. Always: both LayerNorm
    inputs (+ statistics), the contiguous q, k, v, the attention probabilities and the
    FFN pre-activation. A linear layer's input only when its weight trains (or carries
    an adapter, which also saves its rank-wide output)."""
    d, heads, ffn = cfg.block_residual[block], cfg.block_heads[block], cfg.block_units[block]
    inner = heads * cfg.head_size
    targets = set(plan.lora.targets) if plan.lora else set()
    needs_input = {name: trained or name in targets
                   for name in ("q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out")}
    floats = 2 * d + 4 + 3 * inner + heads * t + ffn
    floats += d if needs_input["q_proj"] or needs_input["k_proj"] or needs_input["v_proj"] else 0
    floats += inner if needs_input["o_proj"] else 0
    floats += d if needs_input["fc_in"] else 0
    floats += ffn if needs_input["fc_out"] else 0
    return floats + (plan.lora.rank * len(targets) if plan.lora else 0)


def step_flops(config: TinyGPTConfig, plan: TrainingPlan, seq_len: int) -> float:
    """FLOPs of one forward+backward step, counted by torch's flop counter."""
    return _step_flops(_config_key(config), plan_shape(plan), seq_len)


def plan_shape(plan: TrainingPlan, optimizer: OptimizerSpec = OptimizerSpec()
               ) -> TrainingPlan:
    """The plan reduced to what its FLOPs (and, with its optimizer, its memory) depend
    on: a cache key."""
    return replace(plan, local_steps=1, lr=0.0, optimizer=optimizer,
                   train=tuple(sorted(plan.train)), frozen=tuple(sorted(plan.frozen)),
                   slices=shape_of(plan.slices))


_KEYS: dict[int, tuple[TinyGPTConfig, tuple[int, ...]]] = {}


def _config_key(config: TinyGPTConfig) -> tuple[int, ...]:
    """The config's sizes, remembered per config object (a transformers config's
    attributes are slow to read, and the planners ask thousands of times a round)."""
    known = _KEYS.get(id(config))
    if known is not None and known[0] is config:
        return known[1]
    key = (config.vocab_size, config.max_seq_len, config.n_layer, config.n_embd,
           config.n_head, config.head_size, config.ffn_size)
    if len(_KEYS) > 64:
        _KEYS.clear()
    _KEYS[id(config)] = (config, key)
    return key


def _config_from_key(key: tuple[int, ...]) -> TinyGPTConfig:
    vocab, max_seq, n_layer, n_embd, n_head, head_size, ffn_size = key
    return TinyGPTConfig(vocab_size=vocab, max_seq_len=max_seq, n_layer=n_layer, n_embd=n_embd,
                         n_head=n_head, head_size=head_size, ffn_size=ffn_size)


@lru_cache(maxsize=256)
def _param_counts(key: tuple[int, ...], slices: Slices, lora: LoraSpec | None
                  ) -> tuple[tuple[str, int], ...]:
    config = _config_from_key(key)
    plan = TrainingPlan(train=(), frozen=(), local_steps=1, batch_size=1, lr=0.0, lora=lora,
                        slices=slices)
    with torch.device("meta"):
        model = model_for_plan(config, plan)
    counts = dict.fromkeys([*layer_groups(config.n_layer), "lora"], 0)
    for name, param in model.named_parameters():
        counts["lora" if "lora_" in name else group_of(name)] += param.numel()
    return tuple(counts.items())


@lru_cache(maxsize=1024)
def _step_flops(key: tuple[int, ...], plan: TrainingPlan, seq_len: int) -> float:
    with torch.device("meta"):
        model = model_for_plan(_config_from_key(key), plan)
    prepare_model(model, plan)
    tokens = torch.zeros(plan.batch_size, seq_len + 1, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        loss = loss_of_step(model, plan, tokens)
        if loss.requires_grad:
            loss.backward()
    return float(counter.get_total_flops())


def parse_plan(spec: str, config: TinyGPTConfig, batch_size: int,
               optimizer: OptimizerSpec = OptimizerSpec(), local_steps: int = 1,
               lr: float = 0.0, slice_residual: bool = False) -> TrainingPlan:
    """A plan from a short spec: `full`, `last:N` (the last N blocks and the head),
    `head`, `lora:R` (rank R on q and v, head trained), `width:S` (every block at width S,
    its first heads and units, and with `slice_residual` its first residual channels,
    trained end to end). Raises ValueError for anything else."""
    groups = tuple(layer_groups(config.n_layer))
    kind, _, arg = spec.partition(":")

    def plan(train: tuple[str, ...], frozen: tuple[str, ...], lora: LoraSpec | None = None,
             slices: Slices = ()) -> TrainingPlan:
        return TrainingPlan(train, frozen, local_steps, batch_size, lr, optimizer, lora, slices)

    if kind == "full" and not arg:
        return plan(groups, ())
    if kind == "head" and not arg:
        return plan(groups[-1:], groups[:-1])
    if kind == "last" and arg.isdigit() and 0 <= int(arg) <= config.n_layer:
        n = int(arg) + 1
        return plan(groups[-n:], groups[:-n])
    if kind == "lora" and arg.isdigit() and int(arg) > 0:
        return plan(groups[-1:], groups[:-1], lora=LoraSpec(rank=int(arg)))
    if kind == "width" and _is_fraction(arg):
        part = first_slice(config, float(arg), slice_residual)
        return plan(groups, (), slices=uniform(config, part))
    raise ValueError(f"bad plan {spec!r}: use full, head, last:N (0..{config.n_layer}), "
                     "lora:R or width:S (0 < S <= 1)")


def _is_fraction(text: str) -> bool:
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False
