"""CAFF: constraint-aware federated finetuning (Pfeiffer et al., arXiv 2411.07826).

Once, before training, pick the pretrained architecture a* that maximises the mean over
the fleet of n_{a,c}: how many final blocks device c can train under its memory, upload
and compute budgets (objective `count`, or `fraction` = n / L_a; ties go to the larger
model). Every round, each selected device trains its own last n_c blocks of a*, planned
again from its current constraints; the head always trains, the embeddings only when
n_c is every block; a device that cannot even train the head sits out. The server
averages each layer over the devices that trained it, weighted by their examples.

Budgets per round: memory is the device's budget; upload is uplink x `budget_s` and
compute is FLOP rate x `budget_s`, where `budget_s` defaults to the round deadline.
The candidates are `models`, by default the zoo's pretrained family
(fleetsim.zoo.model.ARCHITECTURES).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Literal, get_args

import numpy as np
from pydantic import field_validator

from fleetsim.policy import Policy, PolicyParams, last_blocks_plan, most_blocks
from fleetsim.types import (
    DeviceId,
    ModelChoice,
    RoundContext,
    SetupContext,
    TrainingPlan,
)
from fleetsim.zoo.model import ARCHITECTURES, ZOO, layer_groups
from policies import register

Objective = Literal["count", "fraction"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)


@register
class Caff(Policy):
    name = "caff"

    class Params(PolicyParams):
        objective: Objective = "count"
        budget_s: float | None = None  # a round's time budget (default: the deadline)
        models: tuple[str, ...] | None = None  # the candidates (default: the family)

        @field_validator("models")
        @classmethod
        def _known(cls, models: tuple[str, ...] | None) -> tuple[str, ...] | None:
            unknown = set(models or ()) - set(ZOO)
            if unknown:
                raise ValueError(f"unknown zoo models {sorted(unknown)}; known: "
                                 f"{', '.join(ZOO)}")
            return models

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.models = self.params.models or ARCHITECTURES
        self.scores: dict[str, float] = {}  # mean objective per candidate, for the record

    def setup(self, ctx: SetupContext) -> ModelChoice:
        budget = self.params.budget_s if self.params.budget_s is not None \
            else ctx.deadline_s
        # devices with the same constraints train the same blocks: plan each kind once
        kinds = [replace(d, device_id=0) for d in ctx.devices]
        for name in self.models:
            config = ZOO[name].config
            groups = tuple(layer_groups(config.n_layer))
            per_kind = {k: most_blocks(config, k, ctx.training, groups, budget)
                        for k in set(kinds)}
            blocks = [per_kind[k] for k in kinds]
            trained = np.array([-1 if n is None else n for n in blocks], dtype=float)
            if self.params.objective == "fraction":
                trained = np.where(trained < 0, -1, trained / config.n_layer)
            self.scores[name] = float(trained.mean())
        # the best mean; among equals the larger model (more parameters)
        best = max(self.models, key=lambda n: (self.scores[n], _size(n)))
        return ModelChoice(model_name=best)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        budget = self.params.budget_s if self.params.budget_s is not None \
            else ctx.deadline_s
        plans = {}
        for device in ctx.devices:
            n = most_blocks(ctx.model.config, device, ctx.training, ctx.model.groups, budget)
            if n is not None:
                plans[device.device_id] = last_blocks_plan(device, ctx.training,
                                                           ctx.model.groups, n)
        return plans


def _size(name: str) -> int:
    config = ZOO[name].config
    return config.n_layer * config.n_embd * config.n_embd
