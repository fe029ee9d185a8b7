"""Runs that lose nothing: a driver killed with SIGKILL mid-run, resumed, ends with the
same rounds.jsonl and devices.jsonl as a run never interrupted (wall times aside)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def fleetsim(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleetsim", *args, "--no-live"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def without_wall_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("wall_time_s", "host")} for row in rows]


def test_killed_run_resumes_to_the_same_results(tmp_path: Path) -> None:
    source = tmp_path / "scenario.yaml"
    source.write_text(SCENARIO)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert fleetsim("run", str(source), "--out", str(whole)).wait(timeout=600) == 0

    victim = fleetsim("run", str(source), "--out", str(killed))
    deadline = time.time() + 600
    while len(read_jsonl(killed / "rounds.jsonl") if (killed / "rounds.jsonl").exists()
               else []) < 3 and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (killed / "summary.json").exists()

    resumed = fleetsim("resume", str(killed))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read() if resumed.stderr else ""
    for name in ("rounds.jsonl", "devices.jsonl"):
        assert without_wall_time(read_jsonl(killed / name)) == \
            without_wall_time(read_jsonl(whole / name)), name
    statuses = {r["status"] for r in read_jsonl(whole / "devices.jsonl")}
    assert "ok" in statuses


def test_resume_without_a_checkpoint_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    proc = fleetsim("resume", str(tmp_path))
    assert proc.wait(timeout=120) == 2
    assert b"no checkpoint" in proc.stderr.read()  # type: ignore[union-attr]
