"""Policies: the registry, FedAvg's planning, and user policy files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetsim.device.cost import group_param_counts, predict_peak_bytes
from fleetsim.types import (
    DeviceState,
    ModelChoice,
    ModelInfo,
    OptimizerSpec,
    RoundContext,
    SetupContext,
    TrainingDefaults,
    Update,
)
from fleetsim.zoo.model import ZOO, layer_groups
from policies import create_policy, registered

ROOT = Path(__file__).resolve().parent.parent
CFG = ZOO["gpt-2x64"].config
TRAINING = TrainingDefaults(local_steps=None, local_epochs=2.0, batch_size=8, lr=0.1,
                            optimizer=OptimizerSpec("sgd", 0.9), seq_len=32)


def device(device_id: int, memory_bytes: int, examples: int = 20) -> DeviceState:
    return DeviceState(device_id, "test", memory_bytes, 1e9, 1e6, 1e6, 0.01, 0.0, examples)


def context(devices: tuple[DeviceState, ...]) -> RoundContext:
    model = ModelInfo("gpt-2x64", CFG.n_layer, tuple(layer_groups(CFG.n_layer)),
                      group_param_counts(CFG), CFG)
    return RoundContext(0, 5, 0.0, devices, model, TRAINING, 600.0, None,
                        np.random.default_rng(0))


def test_registry_holds_the_readmes_policies() -> None:
    """Every policy the README's table describes is registered, and no other."""
    readme = (ROOT / "README.md").read_text().split("\n## Policies\n")[1].split("\n## ")[0]
    table = [line.split("|")[1].strip().strip("`") for line in readme.splitlines()
             if line.startswith("| `")]
    assert len(table) == 10 and table[:2] == ["fedavg", "caff"]
    assert sorted(registered()) == sorted(table)
    with pytest.raises(LookupError, match="unknown policy"):
        create_policy("fedavgg", {})


def test_fedavg_plans_full_training_and_sits_out_small_devices() -> None:
    policy = create_policy("fedavg", {})
    ctx = context((device(0, 10**9), device(1, 1024), device(2, 10**9, examples=40)))
    plans = policy.plan_round(ctx)
    assert sorted(plans) == [0, 2]  # device 1 cannot fit full finetuning
    assert plans[0].train == ctx.model.groups and plans[0].frozen == ()
    assert plans[0].local_steps == 5 and plans[2].local_steps == 10  # 2 epochs of 20 / 40
    for d, plan in plans.items():
        assert predict_peak_bytes(CFG, plan, TRAINING.seq_len) <= ctx.devices[d].memory_bytes


def test_fedavg_aggregates_by_examples() -> None:
    policy = create_policy("fedavg", {})
    state = {"w": np.zeros(2, np.float32)}
    updates = [Update(0, 1.0, {"w": np.array([1, 1], np.float32)}),
               Update(1, 3.0, {"w": np.array([5, 5], np.float32)})]
    new = policy.aggregate(context(()), state, updates)
    np.testing.assert_allclose(new["w"], [4, 4])
    assert state["w"].sum() == 0


MINIMAL = """
from pydantic import Field
from fleetsim.policy import Policy, PolicyParams, plan_last_blocks

class Mine(Policy):
    name = "mine"

    class Params(PolicyParams):
        k: int = Field(default=1, ge=0)

    def plan_round(self, ctx):
        return plan_last_blocks(ctx, self.params.k)
"""


def test_a_minimal_user_policy_writes_only_plan_round(tmp_path: Path) -> None:
    source = tmp_path / "mine.py"
    source.write_text(MINIMAL)
    policy = create_policy(f"{source}:Mine", {"k": 2})
    assert policy.params.k == 2
    ctx = context((device(0, 1 << 30), device(1, 1 << 30)))
    assert policy.setup(SetupContext(ctx.devices, "gpt-2x64", TRAINING, 600.0, 5)) \
        == ModelChoice("gpt-2x64")  # the scenario's model by default
    update = Update(0, 1.0, {"w": np.ones(2, np.float32)})
    new = policy.aggregate(ctx, {"w": np.zeros(2, np.float32)}, [update])
    np.testing.assert_allclose(new["w"], [1, 1])  # the masked mean by default
    # k = 2 is every block of gpt-2x64: the whole model, embeddings too; 2 epochs of 20
    # examples in batches of 8 are 5 steps
    plans = policy.plan_round(ctx)
    assert sorted(plans) == [0, 1]
    for plan in plans.values():
        assert (plan.train, plan.frozen) == (("embed", "block.0", "block.1", "head"), ())
        assert (plan.local_steps, plan.batch_size, plan.lr) == (5, 8, 0.1)
    one = create_policy(f"{source}:Mine", {"k": 1}).plan_round(ctx)[0]
    assert (one.train, one.frozen) == (("block.1", "head"), ("embed", "block.0"))
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        create_policy(f"{source}:Mine", {"k": -1})


def test_a_duck_typed_user_policy_gets_its_params_as_keywords(tmp_path: Path) -> None:
    source = tmp_path / "duck.py"
    source.write_text("class Duck:\n    name = 'duck'\n    def __init__(self, k=1):\n"
                      "        self.k = k\n    def setup(self, ctx): ...\n"
                      "    def plan_round(self, ctx): ...\n"
                      "    def aggregate(self, ctx, state, updates): ...\n")
    assert create_policy(f"{source}:Duck", {"k": 3}).k == 3
    with pytest.raises(TypeError, match="unexpected keyword"):
        create_policy(f"{source}:Duck", {"kk": 3})


BAD_POLICIES = [  # file text, class, what the one line says
    ("class Mine(:\n", "Mine", "syntax error at line 1"),
    ("import not_a_module_here\n", "Mine", "ModuleNotFoundError: No module named"),
    ("raise RuntimeError('boom\\nsecond line')\n", "Mine", "RuntimeError: boom second line"),
    (MINIMAL, "Other", "has no class 'Other' (it defines: Mine)"),
    ("class Mine:\n    def plan_round(self, ctx): ...\n", "Mine", "lacks setup, aggregate"),
]


@pytest.mark.parametrize(("text", "cls", "said"), BAD_POLICIES)
def test_a_bad_policy_file_is_one_line_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture, text: str, cls: str, said: str) -> None:
    from fleetsim.cli import main

    source = tmp_path / "bad.py"
    source.write_text(text)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text((ROOT / "scenarios" / "smoke.yaml").read_text().replace(
        "name: fedavg", f"name: {source}:{cls}"))
    out = tmp_path / "out"
    for args in (["validate", str(scenario)], ["run", str(scenario), "--out", str(out)]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "policy.name" in err[0] and said in err[0], err
    assert not out.exists()  # refused before data, hosts or the run directory


def test_a_misspelt_or_mistyped_param_is_refused_at_validation(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fleetsim.cli import main

    scenario = tmp_path / "scenario.yaml"
    smoke = (ROOT / "scenarios" / "smoke.yaml").read_text()
    scenario.write_text(smoke.replace("name: fedavg", "name: lora\n  params: {rnak: 4}"))
    assert main(["validate", str(scenario)]) == 2
    assert "policy.params.rnak: unknown key (did you mean 'rank'?)" in capsys.readouterr().err
    scenario.write_text(smoke.replace("name: fedavg", "name: lora\n  params: {rank: four}"))
    assert main(["validate", str(scenario)]) == 2
    assert "policy.params.rank: " in capsys.readouterr().err
