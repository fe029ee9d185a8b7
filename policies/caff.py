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
(fleetsim.model.ARCHITECTURES).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from fleetsim.aggregate import masked_mean
from fleetsim.model import ARCHITECTURES, ZOO, layer_groups
from fleetsim.policy import last_blocks_plan, most_blocks
from fleetsim.types import (
    DeviceId,
    ModelChoice,
    ModelState,
    RoundContext,
    SetupContext,
    TrainingPlan,
    Update,
)
from policies import register

OBJECTIVES = ("count", "fraction")


@register
class Caff:
    name = "caff"

    def __init__(self, objective: str = "count", budget_s: float | None = None,
                 models: Sequence[str] | None = None) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"caff: objective must be one of {OBJECTIVES}, not {objective!r}")
        unknown = set(models or ()) - set(ZOO)
        if unknown:
            raise ValueError(f"caff: unknown zoo models {sorted(unknown)}")
        self.objective, self.budget_s = objective, budget_s
        self.models = tuple(models or ARCHITECTURES)
        self.scores: dict[str, float] = {}  # mean objective per candidate, for the record

    def setup(self, ctx: SetupContext) -> ModelChoice:
        budget = self.budget_s if self.budget_s is not None else ctx.deadline_s
        # devices with the same constraints train the same blocks: plan each kind once
        kinds = [replace(d, device_id=0) for d in ctx.devices]
        for name in self.models:
            config = ZOO[name].config
            groups = tuple(layer_groups(config.n_layer))
            per_kind = {k: most_blocks(config, k, ctx.training, groups, budget)
                        for k in set(kinds)}
            blocks = [per_kind[k] for k in kinds]
            trained = np.array([-1 if n is None else n for n in blocks], dtype=float)
            if self.objective == "fraction":
                trained = np.where(trained < 0, -1, trained / config.n_layer)
            self.scores[name] = float(trained.mean())
        # the best mean; among equals the larger model (more parameters)
        best = max(self.models, key=lambda n: (self.scores[n], _size(n)))
        return ModelChoice(model_name=best)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        budget = self.budget_s if self.budget_s is not None else ctx.deadline_s
        plans = {}
        for device in ctx.devices:
            n = most_blocks(ctx.model.config, device, ctx.training, ctx.model.groups, budget)
            if n is not None:
                plans[device.device_id] = last_blocks_plan(device, ctx.training,
                                                           ctx.model.groups, n)
        return plans

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState:
        return masked_mean(state, updates)  # per layer, over the devices that trained it


def _size(name: str) -> int:
    config = ZOO[name].config
    return config.n_layer * config.n_embd * config.n_embd
