"""Training learns: from scratch, a few rounds of each kind of method raise accuracy far
above the start and lower the training loss. The same check fails for each way training
can be broken (a server step the wrong way, noise for the update, gradient ascent on the
devices, a learning rate far too small): the margin is one broken training cannot reach,
and the check is known to bite."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

import fleetsim
import fleetsim.device.training as training

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "scenarios" / "smoke.yaml"
POLICIES = Path(__file__).parent / "policies"
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


def negated_loss(original: Callable) -> Callable:
    return lambda *args: -original(*args)


def tiny_lr(original: Callable) -> Callable:
    return lambda model, plan: original(model, replace(plan, lr=plan.lr / 1000))


@pytest.mark.parametrize(("policy", "patch"), [
    (f"{POLICIES / 'flipped.py'}:Flipped", None),  # the server step goes the wrong way
    (f"{POLICIES / 'noisy.py'}:Noisy", None),  # noise of the update's size instead
    ("fedavg", ("loss_of_step", negated_loss)),  # devices climb the loss (gradient ascent)
    ("fedavg", ("make_optimizer", tiny_lr))],  # a learning rate 1000x too small
    ids=["flipped-update", "noise-update", "gradient-ascent", "wrong-lr"])
def test_broken_training_fails_the_same_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               policy: str, patch: tuple | None) -> None:
    if patch is not None:  # in the training code the local backend's hosts run in-process
        name, broken = patch
        monkeypatch.setattr(training, name, broken(getattr(training, name)))
    result = learned(tmp_path, policy)
    start, final = result.summary["initial_accuracy"], result.summary["final_accuracy"]
    assert final < start + MARGIN, (start, final)
