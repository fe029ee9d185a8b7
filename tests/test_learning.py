"""Training learns: from scratch, a few rounds of each kind of method raise accuracy far
above the start and lower the training loss, and a policy whose server step goes the
wrong way (tests/policies/flipped.py) does not: the margin is one a broken gradient
cannot reach, and the checks are known to bite."""

from __future__ import annotations

from pathlib import Path

import pytest

import fleetsim

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "scenarios" / "smoke.yaml"
FLIPPED = Path(__file__).parent / "policies" / "flipped.py"
# from scratch, SGD with momentum: three rounds take next-character accuracy from about
# 1% (chance) past the unigram plateau (0.16)
SCRATCH = {"model__init": "scratch", "training__optimizer": {"name": "sgd", "momentum": 0.9},
           "training__lr": 0.1, "workers__backend": "local", "rounds": 3,
           "eval__max_samples": 400}
MARGIN = 0.10  # accuracy points x 100 above the start


def learned(tmp_path: Path, policy: str, **params: object) -> fleetsim.RunResult:
    return fleetsim.run(SMOKE, out=tmp_path / "run", progress="none", policy__name=policy,
                        policy__params=params, **SCRATCH)


@pytest.mark.parametrize(("policy", "params"), [
    ("fedavg", {}), ("caff", {"models": ["gpt-2x64"]}), ("lora", {}), ("heterofl", {})])
def test_each_kind_of_method_learns(tmp_path: Path, policy: str, params: dict) -> None:
    result = learned(tmp_path, policy, **params)
    start, final = result.summary["initial_accuracy"], result.summary["final_accuracy"]
    assert start < 0.05 and final > start + MARGIN, (start, final)
    losses = [r["train_loss"] for r in result.rounds]
    assert losses[-1] < losses[0] - 0.3, losses


def test_a_flipped_server_step_fails_the_same_check(tmp_path: Path) -> None:
    result = learned(tmp_path, f"{FLIPPED}:Flipped")
    start, final = result.summary["initial_accuracy"], result.summary["final_accuracy"]
    assert final < start + MARGIN, (start, final)
