"""What the cost model says about an experiment, for the reproduction document: the
architecture CAFF would pick from the whole pretrained family under each objective, and
the peak memory of CAFF's and LoRA's plans on the experiment's model (predicted, and
measured where a step is cheap). Each works on a scenario a run directory holds (its
resolved `scenario.yaml`), so it sees the fleet, model and tuned settings that ran.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fleetsim.config.scenario import Scenario, device_profiles, load_scenario
from fleetsim.device.cost import parse_plan, predict_peak_bytes, step_flops
from fleetsim.runtime.session import DRY_RUN_EXAMPLES, training_defaults
from fleetsim.types import MIB, SetupContext, TrainingPlan
from fleetsim.world.fleet import build_fleet
from fleetsim.zoo.model import ARCHITECTURES, ZOO, TinyGPTConfig
from policies import create_policy
from policies.caff import OBJECTIVES

# A plan is measured (two real steps on random tokens) only when the full plan's step
# costs at most this many FLOPs: gpt-4x128 at batch 32 and 80 characters is 1.4e10.
MEASURE_MAX_FLOPS = 1.5e10
LORA_FALLBACK_RANK = 1  # the smallest adapter: LoRA's memory at its least
Measure = Callable[[TinyGPTConfig, TrainingPlan, int], int]  # config, plan, seq -> bytes


def run_scenario_of(run_dir: Path) -> Scenario:
    """The resolved scenario a finished run wrote (`scenario.yaml`)."""
    return load_scenario(run_dir / "scenario.yaml")


def setup_context(scenario: Scenario) -> SetupContext:
    """The SetupContext a run of `scenario` hands its policy (as session.py builds it):
    the whole fleet at time 0, round 0's training settings. Every device holds
    DRY_RUN_EXAMPLES windows: an architecture choice does not depend on them."""
    fleet = build_fleet(scenario, device_profiles(scenario),
                        [DRY_RUN_EXAMPLES] * scenario.num_devices)
    devices = tuple(fleet.state(i, 0.0) for i in range(len(fleet)))
    return SetupContext(devices, scenario.model.name, training_defaults(scenario, 0),
                        scenario.selection.deadline_s, scenario.rounds)


@dataclass(frozen=True)
class CaffChoice:
    objective: str  # count or fraction
    scores: Mapping[str, float]  # candidate -> mean over devices of its objective
    choice: str


def caff_choices(scenario: Scenario) -> list[CaffChoice]:
    """Per objective, what CAFF with the scenario's params (budget_s) picks from the
    whole pretrained family (ARCHITECTURES) on the scenario's fleet at time 0."""
    ctx = setup_context(scenario)
    params = dict(scenario.policy.params) if scenario.policy.name == "caff" else {}
    choices = []
    for objective in OBJECTIVES:
        caff = create_policy("caff", {**params, "objective": objective,
                                      "models": list(ARCHITECTURES)})
        choice = caff.setup(ctx).model_name
        choices.append(CaffChoice(objective, dict(caff.scores), choice))
    return choices


@dataclass(frozen=True)
class PlanMemory:
    spec: str  # last:N, full or lora:R
    depth: int  # blocks the gradient flows through (LoRA: every block)
    predicted_mb: float
    measured_mb: float | None  # None: not measured


@dataclass(frozen=True)
class MemoryPlans:
    """CAFF's plans last:1..last:L and full, then LoRA's at the policy's rank and at
    rank 1, on one model with the scenario's batch size, optimizer and sequence length."""

    model: str
    batch_size: int
    optimizer: str
    seq_len: int
    targets: tuple[str, ...]  # LoRA's adapted layers
    plans: tuple[PlanMemory, ...]

    def get(self, spec: str) -> PlanMemory:
        return next(p for p in self.plans if p.spec == spec)

    @property
    def lora_specs(self) -> list[str]:
        return [p.spec for p in self.plans if p.spec.startswith("lora:")]

    @property
    def depth(self) -> int:
        return ZOO[self.model].config.n_layer


def plan_specs(n_layer: int, lora_rank: int) -> list[str]:
    """last:1..last:L, full, lora:<rank> and lora:1 (once if the rank is 1)."""
    ranks = dict.fromkeys([lora_rank, LORA_FALLBACK_RANK])
    return [*(f"last:{n}" for n in range(1, n_layer + 1)), "full",
            *(f"lora:{r}" for r in ranks)]


def memory_plans(scenario: Scenario, measure: Measure | bool = True) -> MemoryPlans:
    """The peak memory of each plan of `plan_specs` on the scenario's model; LoRA's rank
    and targets are those of the scenario's lora policy (its defaults when the scenario
    runs another policy). `measure`: True measures two real steps per plan when the full
    plan's step is cheap (MEASURE_MAX_FLOPS), False measures nothing, a Measure is
    called for every plan."""
    config = ZOO[scenario.model.name].config
    t = training_defaults(scenario, 0)
    params = dict(scenario.policy.params) if scenario.policy.name == "lora" else {}
    lora = create_policy("lora", params).spec
    plans = {spec: parse_plan(spec, config, t.batch_size, t.optimizer)
             for spec in plan_specs(config.n_layer, lora.rank)}
    plans = {spec: replace(plan, lora=replace(lora, rank=plan.lora.rank)) if plan.lora
             else plan for spec, plan in plans.items()}
    how = measure if callable(measure) else _measured_bytes if measure and step_flops(
        config, plans["full"], t.seq_len) <= MEASURE_MAX_FLOPS else None
    return MemoryPlans(scenario.model.name, t.batch_size, t.optimizer.name, t.seq_len,
                       lora.targets, tuple(_memory(spec, plan, config, t.seq_len, how)
                                           for spec, plan in plans.items()))


def _memory(spec: str, plan: TrainingPlan, config: TinyGPTConfig, seq_len: int,
            measure: Measure | None) -> PlanMemory:
    kind, _, arg = spec.partition(":")
    depth = int(arg) if kind == "last" else config.n_layer  # LoRA: back to the first block
    measured = measure(config, plan, seq_len) / MIB if measure else None
    return PlanMemory(spec, depth, predict_peak_bytes(config, plan, seq_len) / MIB, measured)


def _measured_bytes(config: TinyGPTConfig, plan: TrainingPlan, seq_len: int) -> int:
    from fleetsim.device.training import measure_step

    return measure_step(config, plan, seq_len, steps=2)[0]


def ratio_text(plans: MemoryPlans, lora: str, caff: str) -> str:
    """`lora` over `caff`, predicted (and measured when both were): `1.23x (measured
    1.20x)`."""
    a, b = plans.get(lora), plans.get(caff)
    text = f"{a.predicted_mb / b.predicted_mb:.2f}x"
    if a.measured_mb is not None and b.measured_mb is not None:
        text += f" (measured {a.measured_mb / b.measured_mb:.2f}x)"
    return text


def scores_row(choice: CaffChoice, candidates: Sequence[str]) -> str:
    """One objective's row: each candidate's mean score, then the choice."""
    return (f"| {choice.objective} | " + " | ".join(f"{choice.scores[c]:.2f}"
                                                   for c in candidates)
            + f" | {choice.choice} |")
