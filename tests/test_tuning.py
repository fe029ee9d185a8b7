"""Fair tuning: grids expand in order, the best validation accuracy wins (the first on a
tie), settings apply as `--set` overrides (policy params too), the validation split is
evaluated instead of the test windows, and `fleetsim tune` runs a grid end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from fleetsim.cli import main
from fleetsim.config.scenario import load_scenario
from fleetsim.errors import ConfigError
from fleetsim.runtime.session import eval_sample, load_data
from fleetsim.suite.tuning import (
    Trial,
    apply,
    choose,
    expand,
    grid_of,
    load_tuning,
    on_validation,
    parse_grid,
    result,
    write_tuning,
    yaml_text,
)
from fleetsim.views.compare import with_policy
from tests.conftest import SMOKE
from tests.test_outputs import jsonl

TINY = ["--set", "rounds=1", "--set", "training.local_steps=1", "--set", "eval.max_samples=32"]


def test_grid_expands_first_key_slowest() -> None:
    grid = parse_grid(["training.lr=0.1,0.3", "policy.params.rank=4,8,16"], "cli")
    assert expand(grid) == [{"training.lr": lr, "policy.params.rank": rank}
                            for lr in ("0.1", "0.3") for rank in ("4", "8", "16")]


@pytest.mark.parametrize("items", [["training.lr"], ["training.lr="], ["=1"], [],
                                   ["training.lr=1,,2"], ["a.b=1", "a.b=2"]])
def test_bad_grid_is_a_config_error(items: list[str]) -> None:
    with pytest.raises(ConfigError, match="--grid"):
        parse_grid(items, "fleetsim tune")


def test_choice_is_the_best_and_the_first_on_a_tie() -> None:
    assert choose([0.2, 0.5, 0.4]) == 1
    assert choose([0.2, 0.5, 0.5]) == 1  # a tie: the first in grid order
    assert choose([None, math.nan, 0.1]) == 2  # no number loses to a number
    assert choose([None, None]) == 0


def test_suite_values_become_set_text_that_reads_back() -> None:
    for value in (0.01, 1e-05, 3, "adam", [2, 4], True):
        assert yaml.safe_load(yaml_text(value)) == value
    assert grid_of({"training.lr": [0.01, 1e-05]}) == (("training.lr", ("0.01", "1.0e-05")),)


def test_settings_apply_policy_params_and_check_them() -> None:
    lora = with_policy(load_scenario(SMOKE), "lora")
    tuned = apply(lora, {"policy.params.rank": "4", "training.lr": "0.03"}, SMOKE)
    assert tuned.policy.params == {"rank": 4} and tuned.training.lr == 0.03
    assert tuned.fleet == lora.fleet and tuned.name == lora.name
    assert on_validation(lora, {}, SMOKE).eval.split == "validation"
    with pytest.raises(ConfigError, match=r"training\.lrr: unknown key \(did you mean 'lr'"):
        apply(lora, {"training.lrr": "0.1"}, SMOKE)
    with pytest.raises(ConfigError, match="policy.params.rank: Input should be greater than"):
        apply(lora, {"policy.params.rank": "0"}, SMOKE)


def test_choices_read_back_as_values(tmp_path: Path) -> None:
    grid = grid_of({"training.lr": [0.01, 0.03], "policy.params.rank": [4]})
    trials = [Trial(s, f"grid{i:02d}", acc) for i, (s, acc)
              in enumerate(zip(expand(grid), [0.31, 0.35], strict=True))]
    write_tuning(tmp_path / "exp", {"lora": result(grid, trials)})
    assert load_tuning(tmp_path, "exp") == {"lora": {"training.lr": 0.03,
                                                     "policy.params.rank": 4}}
    assert load_tuning(tmp_path, "other") == {}


def test_validation_split_trains_on_less_and_evaluates_held_out_windows() -> None:
    test = load_scenario(SMOKE)
    validation = load_scenario(SMOKE, {"eval.split": "validation",
                                       "data.validation_fraction": "0.2"})
    plain, held = load_data(test, SMOKE), load_data(validation, SMOKE)
    assert [len(c.train) + len(c.validation) for c in held.clients] == \
        [len(c.train) for c in plain.clients]
    sample = eval_sample(held.clients, 10**6, 0, "validation")
    assert np.array_equal(sample, np.concatenate([c.validation for c in held.clients]))
    assert np.array_equal(eval_sample(held.clients, 10**6, 0),
                          np.concatenate([c.test for c in plain.clients]))
    tiny = load_scenario(SMOKE, {"eval.split": "validation",
                                 "data.validation_fraction": "0.0001"})
    with pytest.raises(ConfigError, match="data.validation_fraction: too small"):
        load_data(tiny, SMOKE)


@pytest.mark.slow
def test_tune_runs_the_grid_and_prints_the_choice(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tune"
    args = ["tune", str(SMOKE), "--policy", "lora", "--grid", "training.lr=0.0001,0.01",
            "--grid", "policy.params.rank=2", "--set", "policy.params.scale=1", *TINY,
            "--out", str(out), "--jobs", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    tuned = json.loads((out / "tune.json").read_text())
    accuracies = [t["validation_accuracy"] for t in tuned["trials"]]
    assert [t["set"] for t in tuned["trials"]] == [
        {"training.lr": "0.0001", "policy.params.rank": "2"},
        {"training.lr": "0.01", "policy.params.rank": "2"}]
    # each trial's score is its run's last validation accuracy; the best wins, the first
    # on a tie
    assert accuracies == [jsonl(out / t["run"] / "rounds.jsonl")[-1]["accuracy"]
                          for t in tuned["trials"]]
    best = accuracies.index(max(accuracies))
    assert tuned["choice"] == tuned["trials"][best]["set"]
    for trial in tuned["trials"]:
        ran = yaml.safe_load((out / trial["run"] / "scenario.yaml").read_text())
        assert ran["eval"]["split"] == "validation"
        assert ran["policy"]["params"] == {"rank": 2, "scale": 1}  # --set reaches lora too
        assert ran["workers"]["count"] == 1 and ran["workers"]["backend"] == "local"
    assert f"chose training.lr={tuned['choice']['training.lr']}" in printed
    assert "| grid01 | 0.01 | 2 |" in (out / "tune.md").read_text()
    assert main(args) == 2  # the directory holds a tuning: nothing is overwritten
    assert "already holds a run" in capsys.readouterr().err


def test_tune_rejects_a_bad_grid_key_before_running(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    args = ["tune", str(SMOKE), "--policy", "fedavg", "--grid", "training.lrr=0.1,0.2",
            "--out", str(tmp_path / "tune")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "smoke.yaml: training.lrr: unknown key" in err[0]
    assert not list((tmp_path / "tune").glob("grid*"))
