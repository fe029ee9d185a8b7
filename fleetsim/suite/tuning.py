"""Fair tuning: every policy gets the same search. A grid (key paths in `--set` syntax,
each with the values to try) is expanded in grid order: the cartesian product, the first
key varying slowest. Every setting runs on the validation split (eval.split validation:
windows held out of the clients' train windows, never the test windows) and the setting
with the best final validation accuracy is chosen; a tie goes to the first setting in grid
order. `fleetsim tune` tunes one policy; the suite tunes each policy of an experiment on
its first seed and freezes the choice for every seed's test runs (OUT/<exp>/tuning.json,
read back by `load_tuning`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from fleetsim.config.scenario import Scenario, from_raw
from fleetsim.config.strict import Strict
from fleetsim.errors import ConfigError
from fleetsim.runtime.batch import BatchRun, single_host
from fleetsim.views.metrics import write_atomic

Setting = dict[str, str]  # key path -> value in `--set` syntax (YAML text)
Grid = tuple[tuple[str, tuple[str, ...]], ...]  # key path -> values to try, in grid order
VALIDATION: Setting = {"eval.split": "validation"}
TUNE_FILE = "tune.json"  # `fleetsim tune`'s result, in its output directory
TUNING_FILE = "tuning.json"  # the suite's choices, OUT/<experiment>/tuning.json


class TuningConfig(Strict):
    """Per policy name, its grid: key path (`--set` syntax) -> the values to try."""

    grids: dict[str, dict[str, list[Any]]] = Field(default={})


@dataclass(frozen=True)
class Trial:
    """One setting of a grid, run on the validation split."""

    setting: Setting
    run: str  # its run directory, relative to the tuning output
    validation_accuracy: float | None  # final; None: not run (or never evaluated)


def yaml_text(value: Any) -> str:
    """`value` in `--set` syntax: YAML that reads back as `value` (1e-05 as 1.0e-05)."""
    return str(yaml.safe_dump(value, default_flow_style=True)).removesuffix("\n...\n").strip()


def grid_of(values: Mapping[str, Sequence[Any]]) -> Grid:
    """A grid from parsed YAML: key path -> list of values."""
    return tuple((key, tuple(yaml_text(v) for v in vals)) for key, vals in values.items())


def parse_grid(items: Sequence[str], source: str) -> Grid:
    """A grid from `--grid KEY.PATH=V1,V2` arguments (values hold no commas); ConfigError
    naming `source` on a malformed item, an empty value or a key given twice."""
    grid: list[tuple[str, tuple[str, ...]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        values = tuple(v.strip() for v in text.split(","))
        if not sep or not key or not all(values):
            raise ConfigError(source, "--grid", f"{item!r}: expected KEY.PATH=V1,V2,...")
        if key in dict(grid):
            raise ConfigError(source, "--grid", f"{key!r} is given twice")
        grid.append((key, values))
    if not grid:
        raise ConfigError(source, "--grid", "give at least one KEY.PATH=V1,V2,...")
    return tuple(grid)


def expand(grid: Grid) -> list[Setting]:
    """Every setting of the grid in grid order: the first key varies slowest."""
    keys = [key for key, _ in grid]
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(values for _, values in grid))]


def choose(accuracies: Sequence[float | None]) -> int:
    """The index of the best accuracy; ties go to the first. None or NaN never wins over a
    number; when nothing is a number, the first setting."""
    scores = [a if a is not None and not math.isnan(a) else -math.inf for a in accuracies]
    if not scores:
        raise ValueError("choose: no settings")
    return scores.index(max(scores))


def apply(scenario: Scenario, setting: Mapping[str, str], source: Path) -> Scenario:
    """The scenario with `setting` applied as `--set` overrides, validated and resolved
    again (policy params against the policy's `Params`). Budgets that `memory_of` fixed
    stay as they are: the device does not change with the setting. ConfigError (naming
    `source` and the key path) on a bad key or value."""
    if not setting:
        return scenario
    return from_raw(scenario.model_dump(mode="json", by_alias=True), source, setting)


def on_validation(scenario: Scenario, setting: Mapping[str, str], source: Path) -> Scenario:
    """The scenario a trial runs: `setting` applied, evaluated on the validation split."""
    return apply(scenario, {**setting, **VALIDATION}, source)


def label(setting: Mapping[str, str]) -> str:
    """`a.b=1,c=2`: a setting on one line."""
    return ",".join(f"{key}={value}" for key, value in setting.items())


def trial_runs(scenario: Scenario, source: Path, grid: Grid, tuning_dir: Path
               ) -> list[tuple[Setting, BatchRun]]:
    """Every setting of the grid, in grid order, as a run of `scenario` on the validation
    split on one host (`single_host`), in tuning_dir/grid<i>; all are checked here."""
    return [(setting, BatchRun(single_host(on_validation(scenario, setting, source)), source,
                               tuning_dir / f"grid{i:02d}"))
            for i, setting in enumerate(expand(grid))]


def collect(grid: Grid, trials: Sequence[tuple[Setting, BatchRun]], base: Path
            ) -> dict[str, Any]:
    """`result` from the trials' run directories (named relative to `base`): each one's
    final validation accuracy from its summary.json (None if it has none)."""
    found = []
    for setting, run in trials:
        summary = run.out_dir / "summary.json"
        accuracy = json.loads(summary.read_text())["final_accuracy"] \
            if summary.is_file() else None
        found.append(Trial(setting, str(run.out_dir.relative_to(base)), accuracy))
    return result(grid, found)


def result(grid: Grid, trials: Sequence[Trial]) -> dict[str, Any]:
    """One policy's tuning as JSON: the grid, every trial and the chosen setting."""
    best = trials[choose([t.validation_accuracy for t in trials])]
    return {"grid": {key: list(values) for key, values in grid},
            "trials": [{"run": t.run, "set": t.setting,
                        "validation_accuracy": t.validation_accuracy} for t in trials],
            "choice": best.setting, "choice_run": best.run,
            "choice_validation_accuracy": best.validation_accuracy}


def table(tuned: Mapping[str, Any]) -> str:
    """A markdown table of one policy's trials (`result`'s JSON); * marks the choice."""
    keys = list(tuned["grid"])
    lines = ["| run | " + " | ".join(keys) + " | validation accuracy | chosen |",
             "|" + "---|" * (len(keys) + 3)]
    for t in tuned["trials"]:
        acc = t["validation_accuracy"]
        lines.append(f"| {t['run']} | " + " | ".join(t["set"][k] for k in keys)
                     + f" | {'-' if acc is None else f'{acc:.4f}'} | "
                     + ("*" if t["run"] == tuned["choice_run"] else "") + " |")
    return "\n".join(lines) + "\n"


def write_tuning(exp_dir: Path, policies: Mapping[str, dict[str, Any]]) -> None:
    """The suite's choices for one experiment: policy -> `result`'s JSON."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(exp_dir / TUNING_FILE, json.dumps({"split": "validation",
                                                    "policies": dict(policies)}, indent=1))


def load_tuning(out_dir: Path, exp_name: str) -> dict[str, dict[str, Any]]:
    """The values the suite chose for experiment `exp_name`: policy -> key path -> value
    (parsed YAML, e.g. 0.03). Policies without a grid are absent; {} if nothing was tuned."""
    path = out_dir / exp_name / TUNING_FILE
    if not path.is_file():
        return {}
    policies = json.loads(path.read_text())["policies"]
    return {policy: {key: yaml.safe_load(text) for key, text in tuned["choice"].items()}
            for policy, tuned in policies.items()}
