"""Runs that lose nothing: a driver killed with SIGKILL at chosen points (the KILL_AT
hook, no timing involved), resumed, ends with the same records and summary as a run
never interrupted (wall times aside); resuming a complete run changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fleetsim.runtime.checkpoint import FOLDER
from fleetsim.runtime.engine import KILL_AT
from fleetsim.views.metrics import read_jsonl

# churn, a bandwidth walk and Federated Dropout's random sub-models: every kind of
# state a resume must carry (policy, fleet generators, clock)
SCENARIO = """
name: resume
seed: 4
rounds: 6
model: {name: gpt-2x64}
fleet:
  - {class: phone_low, count: 6, availability: {kind: markov, mean_online_s: 20,
     mean_offline_s: 10}, bandwidth_walk: {sigma: 0.3, every_s: 5}}
  - {class: phone_mid, count: 4, availability: {kind: bernoulli, p: 0.7}}
selection: {devices_per_round: 4, deadline_s: 100000}
training: {local_steps: 3, batch_size: 8, lr: 0.05}
policy: {name: feddropout, params: {widths: [0.5]}}
workers: {backend: local}
eval: {every: 1, max_samples: 40}
"""


def fleetsim(*args: str, kill_at: str = "") -> subprocess.Popen:
    env = {**os.environ, KILL_AT: kill_at}
    return subprocess.Popen([sys.executable, "-m", "fleetsim", *args, "--no-live"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finished(proc: subprocess.Popen) -> int:
    code = proc.wait(timeout=600)
    assert code in (0, -signal.SIGKILL), proc.stderr.read() if proc.stderr else ""
    return code


def without_wall_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("wall_time_s", "host")} for row in rows]


def same_results(one: Path, other: Path) -> None:
    for name in ("rounds.jsonl", "devices.jsonl"):
        assert without_wall_time(read_jsonl(one / name)) == \
            without_wall_time(read_jsonl(other / name)), name
    summaries = [json.loads((d / "summary.json").read_text()) for d in (one, other)]
    for summary in summaries:  # how it ran, not what it computed
        summary.pop("wall_time_s", None), summary.pop("hosts")
    assert summaries[0] == summaries[1]


def uninterrupted(folder: Path, *settings: str) -> Path:
    source = folder / "scenario.yaml"
    source.write_text(SCENARIO)
    out = folder / "out"
    assert finished(fleetsim("run", str(source), "--out", str(out), *settings)) == 0
    statuses = {r["status"] for r in read_jsonl(out / "devices.jsonl")}
    assert {"ok", "offline"} <= statuses  # churn is part of what resume must restore
    return out


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run never interrupted."""
    return uninterrupted(tmp_path_factory.mktemp("whole"))


@pytest.fixture(scope="module")
def whole_async(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run never interrupted, asynchronous: 4 training at once, a step every 2
    arrivals, so jobs in flight at a checkpoint start from older versions."""
    out = uninterrupted(tmp_path_factory.mktemp("whole-async"), "--set", "selection.mode=async",
                        "--set", "selection.fedbuff={concurrency: 4, buffer_size: 2}")
    assert any(j["staleness"] for j in read_jsonl(out / "devices.jsonl"))
    return out


# killed after round 2's records but before its checkpoint (resume drops and replays
# them), after round 3's checkpoint, after the last round's checkpoint (only the summary
# is missing), and on the Ray backend
@pytest.mark.slow
@pytest.mark.parametrize(("kill_at", "backend"), [
    ("2:records", "local"), ("3:checkpoint", "local"), ("5:checkpoint", "local"),
    pytest.param("3:checkpoint", "ray", marks=pytest.mark.ray)])
def test_killed_run_resumes_to_the_same_results(whole: Path, tmp_path: Path, kill_at: str,
                                                 backend: str) -> None:
    killed = tmp_path / "killed"
    victim = fleetsim("run", str(whole / "scenario.yaml"), "--out", str(killed),
                      "--set", f"workers.backend={backend}", kill_at=kill_at)
    assert finished(victim) == -signal.SIGKILL
    r, point = kill_at.split(":")
    assert len(read_jsonl(killed / "rounds.jsonl")) == int(r) + 1
    assert (killed / FOLDER / f"round-{r}.json").exists() == (point == "checkpoint")
    assert not (killed / "summary.json").exists()

    assert finished(fleetsim("resume", str(killed))) == 0
    same_results(killed, whole)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["2:records", "3:checkpoint"])
def test_killed_async_run_resumes_to_the_same_results(whole_async: Path, tmp_path: Path,
                                                       kill_at: str) -> None:
    killed = tmp_path / "killed"
    victim = fleetsim("run", str(whole_async / "scenario.yaml"), "--out", str(killed),
                      kill_at=kill_at)
    assert finished(victim) == -signal.SIGKILL
    assert finished(fleetsim("resume", str(killed))) == 0
    same_results(killed, whole_async)


@pytest.mark.slow
def test_resuming_a_complete_run_changes_nothing(whole: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(whole, tmp_path / "copy")
    before = {f.name: f.read_bytes() for f in copy.iterdir() if f.is_file()}
    assert finished(fleetsim("resume", str(copy))) == 0
    assert {f.name: f.read_bytes() for f in copy.iterdir() if f.is_file()} == before


def test_resume_without_a_checkpoint_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    proc = fleetsim("resume", str(tmp_path))
    assert proc.wait(timeout=120) == 2
    assert b"no checkpoint" in proc.stderr.read()  # type: ignore[union-attr]
