"""How the suite runs: each policy with a grid is tuned on the first seed (validation
split) and its choice is frozen for every seed's test runs; finished runs, tuning runs
included, are not run again; several runs at once give what one after another gives."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from fleetsim.config.scenario import load_scenario
from fleetsim.errors import ConfigError
from fleetsim.suite.paper import load_suite, planned_runs, run_suite, tuning_plan
from fleetsim.suite.tuning import load_tuning
from fleetsim.views.metrics import read_jsonl
from tests.conftest import SMOKE

SUITE = """
seeds: [0, 1]
set: {rounds: "1", training.local_steps: "1", eval.max_samples: "32"}
reduced: {seeds: [0]}
tuning:
  grids:
    fedavg: {training.lr: [0.0001, 0.01]}
    lora: {training.lr: [0.01], policy.params.rank: [2, 4]}
experiments:
  - name: tiny
    title: Tiny
    scenario: scenarios/smoke.yaml
    policies: [fedavg, lora, head_only]
"""


def scenario_of(run_dir: Path) -> dict:
    return dict(yaml.safe_load((run_dir / "scenario.yaml").read_text()))


def accuracies(run_dir: Path) -> list[float | None]:
    return [r["accuracy"] for r in read_jsonl(run_dir / "rounds.jsonl")]


@pytest.mark.slow
def test_tuned_on_the_first_seed_frozen_for_all(tmp_path: Path) -> None:
    suite_file, out, log = tmp_path / "suite.yaml", tmp_path / "runs", io.StringIO()
    suite_file.write_text(SUITE)
    run_suite(suite_file, out, log=log, jobs=2)
    printed = log.getvalue()
    assert printed.count("validation accuracy") == 4 + 2  # 4 trials, 2 choices
    assert printed.count("final accuracy") == 6  # 3 policies x 2 seeds
    tuned = json.loads((out / "tiny" / "tuning.json").read_text())["policies"]
    assert sorted(tuned) == ["fedavg", "lora"]  # head_only has no grid: not tuned
    for trials in tuned.values():
        # the best validation accuracy of the trials' runs wins, the first on a tie
        scores = [t["validation_accuracy"] for t in trials["trials"]]
        assert scores == [accuracies(out / "tiny" / t["run"])[-1] for t in trials["trials"]]
        assert trials["choice"] == trials["trials"][scores.index(max(scores))]["set"]
        for trial in trials["trials"]:
            ran = scenario_of(out / "tiny" / trial["run"])
            assert ran["eval"]["split"] == "validation" and ran["seed"] == 0
    choice = load_tuning(out, "tiny")
    assert choice["lora"]["policy.params.rank"] in (2, 4)
    for seed in (0, 1):
        fedavg, lora = (scenario_of(out / "tiny" / p / f"seed{seed}") for p in ("fedavg",
                                                                               "lora"))
        assert fedavg["training"]["lr"] == choice["fedavg"]["training.lr"]
        assert lora["policy"]["params"] == {"rank": choice["lora"]["policy.params.rank"]}
        assert fedavg["eval"]["split"] == "test" and fedavg["seed"] == seed
        assert scenario_of(out / "tiny" / "head_only" / f"seed{seed}")["training"]["lr"] \
            == load_scenario(SMOKE).training.lr  # not tuned: the scenario's own
    # a killed suite: one trial and one test run lost their summaries
    trial, test = out / "tiny" / "tuning" / "fedavg" / "grid01", out / "tiny" / "lora" / "seed1"
    before = {d: accuracies(d) for d in (trial, test)}
    for d in (trial, test):
        (d / "summary.json").unlink()
    log = io.StringIO()
    run_suite(suite_file, out, log=log, jobs=1)
    again = log.getvalue()
    assert again.count("done before") == 8 and again.count("accuracy 0.") == 2 + 2
    assert "tuning [2/4] tiny fedavg training.lr=0.01: validation accuracy" in again
    assert {d: accuracies(d) for d in (trial, test)} == before
    assert json.loads((out / "tiny" / "tuning.json").read_text())["policies"] == tuned


PAIR = """
seeds: [3]
set: {rounds: "2", training.local_steps: "1", eval.max_samples: "32"}
reduced: {seeds: [3]}
experiments:
  - {name: tiny, title: Tiny, scenario: scenarios/smoke.yaml, policies: [fedavg, head_only]}
"""


@pytest.mark.slow
def test_jobs_do_not_change_results(tmp_path: Path) -> None:
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(PAIR)
    for jobs in (1, 2):
        run_suite(suite_file, tmp_path / f"jobs{jobs}", log=io.StringIO(), jobs=jobs)
    for policy in ("fedavg", "head_only"):
        one, two = (accuracies(tmp_path / f"jobs{j}" / "tiny" / policy / "seed3")
                    for j in (1, 2))
        assert one == two and all(a is not None for a in one)


TUNED = """
seeds: [0, 1]
reduced:
  seeds: [7]
  tuning: {grids: {fedavg: {training.lr: [0.1]}}}
tuning:
  grids:
    fedavg: {training.lr: [0.01, 0.03]}
    upper_bound: {training.lr: [0.01, 0.03, 0.1]}
experiments:
  - name: tiny
    title: Tiny
    scenario: scenarios/smoke.yaml
    policies: [fedavg, lora]
    upper_bound: true
    tuning: {grids: {lora: {policy.params.rank: [2, 4], policy.params.scale: [1, 2]}}}
"""


def plan_of(tmp_path: Path, text: str, reduced: bool = False) -> dict:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    suite = load_suite(path, reduced)
    runs = list(planned_runs(suite, path, tmp_path / "runs", reduced))
    return {name: [s for s, _ in trials] for name, (_, trials)
            in tuning_plan(suite, path, runs, tmp_path / "runs", reduced)["tiny"].items()}


def test_grids_per_experiment_upper_bound_and_reduced(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, TUNED)
    assert plan == {  # the experiment's lora grid beside the suite's; grid order
        "fedavg": [{"training.lr": lr} for lr in ("0.01", "0.03")],
        "lora": [{"policy.params.rank": r, "policy.params.scale": c}
                 for r in ("2", "4") for c in ("1", "2")],
        "upper_bound": [{"training.lr": lr} for lr in ("0.01", "0.03", "0.1")]}
    without = plan_of(tmp_path, TUNED.replace("    upper_bound: {training.lr: [0.01, 0.03, "
                                              "0.1]}\n", ""))
    assert without["upper_bound"] == without["fedavg"]  # the upper bound is FedAvg
    assert plan_of(tmp_path, TUNED, reduced=True) == {
        "fedavg": [{"training.lr": "0.1"}], "upper_bound": [{"training.lr": "0.1"}]}


BAD = """
seeds: [0]
reduced: {seeds: [0]}
tuning: {grids: SUITE_GRIDS}
experiments:
  - {name: tiny, title: Tiny, scenario: scenarios/smoke.yaml, policies: [fedavg, lora],
     tuning: {grids: EXPERIMENT_GRIDS}}
"""


@pytest.mark.parametrize("suite_grids, experiment_grids, key, message", [
    ("{fedavg: {training.lrr: [0.1]}}", "{}", "tuning.grids.fedavg",
     "training.lrr: unknown key (did you mean 'lr'?)"),
    ("{}", "{lora: {policy.params.rank: [0]}}", "experiments[tiny].tuning.grids.lora",
     "policy.params.rank: Input should be greater than or equal to 1"),
    ("{fedavgg: {training.lr: [0.1]}}", "{}", "tuning.grids", "unknown policy 'fedavgg'"),
    ("{fedavg: {training.lr: []}}", "{}", "tuning.grids.fedavg.training.lr", "no values"),
])
def test_a_bad_grid_names_its_key(tmp_path: Path, suite_grids: str, experiment_grids: str,
                                  key: str, message: str) -> None:
    text = BAD.replace("SUITE_GRIDS", suite_grids).replace("EXPERIMENT_GRIDS",
                                                           experiment_grids)
    with pytest.raises(ConfigError) as err:
        plan_of(tmp_path, text)
    assert err.value.key == key and message in err.value.message
