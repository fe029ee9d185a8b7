"""LoRA in federated finetuning, through peft: frozen pretrained weights, adapters of rank
r on chosen targets (default q and v) of every block, the output head trained. The
server averages A and B separately (element by element over the devices that hold them).

Under constraints each device uses the largest rank of `ranks` (powers of two up to
`rank`) whose plan fits its memory and the round's time budget; none fits: it sits out.
Adapter gradients reach back to the first block, so every block's activations are kept:
the memory cost CAFF's paper measures against.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from pydantic import Field

from fleetsim.policy import Policy, PolicyParams, make_plan, within_budgets
from fleetsim.types import (
    DeviceId,
    LoraSpec,
    ModelChoice,
    RoundContext,
    SetupContext,
    TrainingPlan,
)
from policies import register

Target = Literal["q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out"]
TARGETS: tuple[str, ...] = get_args(Target)


@register
class Lora(Policy):
    name = "lora"

    class Params(PolicyParams):
        rank: int = Field(default=16, ge=1)  # the largest; devices use powers of two below
        targets: tuple[Target, ...] = Field(default=("q_proj", "v_proj"), min_length=1)
        scale: int = 2  # alpha = scale * rank
        budget_s: float | None = None  # a round's time budget (default: the deadline)

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        rank = self.params.rank
        self.spec = LoraSpec(rank=rank, targets=self.params.targets, scale=self.params.scale)
        self.ranks = sorted({2**i for i in range(rank.bit_length()) if 2**i <= rank} | {rank},
                            reverse=True)

    def setup(self, ctx: SetupContext) -> ModelChoice:
        return ModelChoice(ctx.model_name, adapters=self.spec)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        budget = self.params.budget_s if self.params.budget_s is not None \
            else ctx.deadline_s
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
