"""CAFF: architecture selection and per-device planning under memory, upload and FLOPs."""

from __future__ import annotations

import pytest

from fleetsim.types import SetupContext
from fleetsim.zoo.model import ARCHITECTURES, ZOO
from policies import create_policy
from tests.test_policy_contract import FLEET, TRAINING, round_context


def trained_blocks(plan) -> int:  # type: ignore[no-untyped-def]
    return sum(g.startswith("block.") for g in plan.train)


def test_stronger_devices_train_more_final_blocks() -> None:
    policy = create_policy("caff", {})
    ctx = round_context("gpt-4x128")
    plans = policy.plan_round(ctx)
    assert 0 not in plans  # 2 MiB: not even the head fits
    blocks = [trained_blocks(plans[d.device_id]) for d in FLEET if d.device_id in plans]
    assert blocks == sorted(blocks) and blocks[0] < blocks[-1] == 4
    for plan in plans.values():
        n = trained_blocks(plan)
        assert ("embed" in plan.train) == (n == 4)  # embeddings only with every block
        assert plan.train[-1] == "head"


def test_budgets_cut_the_plan() -> None:
    ctx = round_context("gpt-4x128")
    roomy = create_policy("caff", {"budget_s": 1e6}).plan_round(ctx)
    tight = create_policy("caff", {"budget_s": 0.5}).plan_round(ctx)  # little upload/compute
    for d, plan in tight.items():
        assert trained_blocks(plan) <= trained_blocks(roomy[d])
    assert sum(map(trained_blocks, tight.values())) < sum(map(trained_blocks, roomy.values()))


def test_architecture_selection_maximises_mean_trained_blocks() -> None:
    policy = create_policy("caff", {})
    choice = policy.setup(SetupContext(FLEET, "gpt-4x128", TRAINING, 120.0, 10))
    assert set(policy.scores) == set(ARCHITECTURES)  # the pretrained family by default
    assert policy.scores[choice.model_name] == max(policy.scores.values())
    # a fleet of weak devices moves the choice to a model they can train more of
    weak = tuple(d for d in FLEET if d.memory_bytes <= 48 << 20)
    weak_choice = create_policy("caff", {}).setup(SetupContext(weak, "gpt-4x128", TRAINING,
                                                               120.0, 10))
    size = {n: ZOO[n].config.n_layer * ZOO[n].config.n_embd for n in ZOO}
    assert size[weak_choice.model_name] < size[choice.model_name]
    fraction = create_policy("caff", {"objective": "fraction"})
    fraction.setup(SetupContext(FLEET, "gpt-4x128", TRAINING, 120.0, 10))
    assert all(-1 <= s <= 1 for s in fraction.scores.values())


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="objective"):
        create_policy("caff", {"objective": "most"})
    with pytest.raises(ValueError, match="unknown zoo"):
        create_policy("caff", {"models": ["gpt-1x1"]})
