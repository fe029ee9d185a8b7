"""LoRA in federated finetuning, through peft: frozen pretrained weights, adapters of rank
r on chosen targets (default q and v) of every block, the output head trained. The
server averages A and B separately (element by element over the devices that hold them).

Under constraints each device uses the largest rank of `ranks` (powers of two up to
`rank`) whose plan fits its memory and the round's time budget; none fits: it sits out.
Adapter gradients reach back to the first block, so every block's activations are kept:
the memory cost CAFF's paper measures against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetsim.aggregate import masked_mean
from fleetsim.policy import make_plan, within_budgets
from fleetsim.types import (
    DeviceId,
    LoraSpec,
    ModelChoice,
    ModelState,
    RoundContext,
    SetupContext,
    TrainingPlan,
    Update,
)
from policies import register

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out")


@register
class Lora:
    name = "lora"

    def __init__(self, rank: int = 16, targets: Sequence[str] = ("q_proj", "v_proj"),
                 scale: int = 2, budget_s: float | None = None) -> None:
        if rank < 1:
            raise ValueError(f"lora: rank must be >= 1, not {rank}")
        unknown = set(targets) - set(TARGETS)
        if unknown or not targets:
            raise ValueError(f"lora: targets must be among {TARGETS}, not {list(targets)}")
        self.spec = LoraSpec(rank=rank, targets=tuple(targets), scale=scale)
        self.budget_s = budget_s
        self.ranks = sorted({2**i for i in range(rank.bit_length()) if 2**i <= rank} | {rank},
                            reverse=True)

    def setup(self, ctx: SetupContext) -> ModelChoice:
        return ModelChoice(ctx.model_name, adapters=self.spec)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        budget = self.budget_s if self.budget_s is not None else ctx.deadline_s
        groups = ctx.model.groups
        plans = {}
        for device in ctx.devices:
            for rank in self.ranks:
                plan = make_plan(device, ctx.training, train=groups[-1:], frozen=groups[:-1],
                                 lora=LoraSpec(rank, self.spec.targets, self.spec.scale))
                if within_budgets(ctx.model.config, plan, device, ctx.training, budget):
                    plans[device.device_id] = plan
                    break
        return plans

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState:
        return masked_mean(state, updates)
