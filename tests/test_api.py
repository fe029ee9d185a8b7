"""The Python API: a scenario as a file, a dict or an object; keyword overrides; the
records as plain values and DataFrames; a run from inside a running event loop (on the
Ray backend); the example script and the README's example as written; bad input as one
ConfigError naming the key."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fleetsim
from fleetsim.config.scenario import load_scenario
from fleetsim.errors import ConfigError
from tests.test_outputs import jsonl

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "scenarios" / "smoke.yaml"
TINY = {"rounds": 1, "training__local_steps": 2, "eval__max_samples": 32}


def test_a_dict_scenario_with_overrides_gives_plain_records(tmp_path: Path) -> None:
    raw = {"name": "from-dict", "rounds": 3, "model": {"name": "gpt-2x64"},
           "fleet": [{"class": "phone_mid", "count": 3}],
           "selection": {"devices_per_round": 2}, "workers": {"backend": "local"}}
    result = fleetsim.run(raw, out=tmp_path / "run", progress="none", **TINY)
    assert result.dir == tmp_path / "run" and len(result.rounds) == 1  # rounds overridden
    assert result.summary["scenario"] == "from-dict"
    assert [d["round"] for d in result.devices] == [0, 0]
    assert load_scenario(tmp_path / "run" / "scenario.yaml").training.local_steps == 2
    frame = result.to_pandas("devices")
    assert list(frame["status"]) == [d["status"] for d in result.devices]
    assert fleetsim.load_run(result.dir).summary == result.summary


def test_a_loaded_scenario_runs_with_a_progress_bar(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    scenario = load_scenario(SMOKE, {"workers.backend": "local"})
    result = fleetsim.run(scenario, out=tmp_path / "run", progress="bar", **TINY)
    printed = capsys.readouterr().out
    assert "1/1" in printed and "done: accuracy" in printed
    assert result.summary["rounds_completed"] == 1


@pytest.mark.asyncio
async def test_run_inside_a_running_event_loop_on_ray_as_in_process(
        tmp_path: Path, ray_session: None) -> None:
    asyncio.get_running_loop()  # as in a notebook: a loop runs in this thread
    result = fleetsim.run(SMOKE, out=tmp_path / "run", progress="none", workers__count=2,
                          **TINY)
    assert {d["host"].split("/")[1] for d in result.devices if d["status"] == "ok"} \
        == {"host0", "host1"}
    local = fleetsim.run(SMOKE, out=tmp_path / "local", progress="none",
                         workers__backend="local", **TINY)
    assert local.summary["final_accuracy"] == result.summary["final_accuracy"]
    assert [r["loss"] for r in local.rounds] == [r["loss"] for r in result.rounds]


def test_bad_input_is_one_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"<dict>: rounds: required key is missing"):
        fleetsim.run({"fleet": [{"class": "phone_mid", "count": 1}]}, out=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"training\.lrr: unknown key \(did you mean 'lr'"):
        fleetsim.run(SMOKE, out=tmp_path / "b", training__lrr=0.1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_the_example_script_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "compare_policies.py"),
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    # every line it prints, from the run directories' records read here
    fedavg = json.loads((tmp_path / "fedavg" / "summary.json").read_text())
    devices = jsonl(tmp_path / "fedavg" / "devices.jsonl")
    expected = [f"fedavg: {fedavg['initial_accuracy']:.4f} -> {fedavg['final_accuracy']:.4f} "
                f"in {len(jsonl(tmp_path / 'fedavg' / 'rounds.jsonl'))} rounds"]
    for policy in ("head_only", "lora"):
        run = tmp_path / "compare" / policy
        final = json.loads((run / "summary.json").read_text())["final_accuracy"]
        up = sum(d["bytes_up"] for d in jsonl(run / "devices.jsonl")) / 1e6
        expected.append(f"{policy}: final accuracy {final:.4f}, {up:.2f} MB up")
    oom = sum(d["status"] == "oom" for d in devices)
    expected.append(f"device records: {len(devices)}, out of memory: {oom}")
    assert done.stdout.splitlines() == expected
    assert "in 2 rounds" in expected[0]
    assert [row["policy"] for row in csv.DictReader(
        (tmp_path / "compare" / "comparison.csv").open())] == ["head_only", "lora"]


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API")[1].split("\n## ")[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(ROOT)
    code = code.replace('out="runs/api-example"', f'out="{tmp_path / "api"}"')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    # what it prints and returns is what the run directory holds, read here
    run = tmp_path / "api"
    rounds, devices = (jsonl(run / f"{name}.jsonl") for name in ("rounds", "devices"))
    summary = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1]  # rounds=2 of the file's 3
    saved = load_scenario(run / "scenario.yaml")  # its keyword overrides
    assert (saved.training.lr, saved.workers.backend) == (1e-4, "local")
    printed = capsys.readouterr().out.splitlines()  # after the progress bar's lines
    assert printed[-1] == f"{summary['final_accuracy']} {len(devices)}"
    assert summary["final_accuracy"] == rounds[-1]["accuracy"]
    frame = namespace["rounds"]
    assert list(frame["round"]) == [0, 1]
    assert list(frame["accuracy"]) == [r["accuracy"] for r in rounds]
