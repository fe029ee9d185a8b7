"""The comparison table, computed from run directories."""

from __future__ import annotations

import json
from pathlib import Path

from fleetsim.config.scenario import load_scenario
from fleetsim.views.compare import comparison_rows, with_policy, write_comparison
from tests.conftest import SMOKE


def fake_run(path: Path, accuracies: list[float | None], times: list[float],
             statuses: list[str]) -> Path:
    path.mkdir()
    rounds = [{"round": i, "sim_time_s": t, "accuracy": a}
              for i, (a, t) in enumerate(zip(accuracies, times, strict=True))]
    devices = [{"status": s, "peak_mem_bytes": (i + 1) << 20, "mem_cap_bytes": 8 << 20,
                "flops": 1e12} for i, s in enumerate(statuses)]
    (path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (path / "devices.jsonl").write_text("".join(json.dumps(d) + "\n" for d in devices))
    (path / "summary.json").write_text(json.dumps({
        "model": "gpt-2x64", "final_accuracy": accuracies[-1], "initial_accuracy": 0.1,
        "bytes_up": 2e6, "bytes_down": 4e6}))
    return path


def test_rows_use_a_common_simulated_time(tmp_path: Path) -> None:
    fast = fake_run(tmp_path / "a", [0.3, 0.4, 0.5], [10, 20, 30], ["ok", "ok", "oom"])
    slow = fake_run(tmp_path / "b", [0.2, 0.6], [25, 50], ["ok", "straggler"])
    idle = fake_run(tmp_path / "c", [0.1], [0.0], ["skipped"])  # nobody could train
    rows = comparison_rows([("a", fast), ("b", slow), ("c", idle)])
    assert [r["common_time_s"] for r in rows] == [30, 30, 30]
    assert rows[2]["accuracy_at_common_time"] == 0.1 and rows[2]["contributed_share"] == 0
    assert rows[0]["accuracy_at_common_time"] == 0.5
    assert rows[1]["accuracy_at_common_time"] == 0.2  # its 0.6 came at 50 s
    assert rows[0]["oom"] == 1 and rows[1]["stragglers"] == 1
    assert rows[0]["contributed_share"] == 2 / 3 and rows[0]["peak_mem_max_mb"] == 2.0
    write_comparison(tmp_path, rows)
    # every cell by hand. a: ok peaks 1 and 2 MB (the OOM's 3 MB not counted), caps 8 MB,
    # 1 TFLOP per contribution; b: one ok of 1 MB; c: nobody contributed. 2 MB up and
    # 4 MB down each (summary.json).
    assert (tmp_path / "comparison.csv").read_text().splitlines() == [
        "policy,model,final_accuracy,accuracy_at_common_time,common_time_s,peak_mem_max_mb,"
        "peak_mem_mean_mb,mem_cap_mean_mb,mb_up,mb_down,tflops,contributed_share,oom,"
        "stragglers,skipped",
        f"a,gpt-2x64,0.5,0.5,30,2.0,1.5,8.0,2.0,4.0,2.0,{2 / 3},1,0,0",
        "b,gpt-2x64,0.6,0.2,30,1.0,1.0,8.0,2.0,4.0,1.0,0.5,0,1,0",
        "c,gpt-2x64,0.1,0.1,30,0.0,0.0,0.0,2.0,4.0,0.0,0.0,0,0,1"]
    assert (tmp_path / "comparison.md").read_text().splitlines()[2:] == [
        "| a | gpt-2x64 | 0.5000 | 0.5000 | 30 | 2.0000 | 1.5000 | 8.0000 | 2.0000 | 4.0000 | "
        "2.0000 | 0.6667 | 1 | 0 | 0 |",
        "| b | gpt-2x64 | 0.6000 | 0.2000 | 30 | 1.0000 | 1.0000 | 8.0000 | 2.0000 | 4.0000 | "
        "1.0000 | 0.5000 | 0 | 1 | 0 |",
        "| c | gpt-2x64 | 0.1000 | 0.1000 | 30 | 0.0000 | 0.0000 | 0.0000 | 2.0000 | 4.0000 | "
        "0.0000 | 0.0000 | 0 | 0 | 1 |"]


def test_with_policy_keeps_everything_else() -> None:
    scenario = load_scenario(SMOKE)
    other = with_policy(scenario, "caff")
    assert other.policy.name == "caff" and other.policy.params == {}
    assert other.fleet == scenario.fleet and other.seed == scenario.seed
