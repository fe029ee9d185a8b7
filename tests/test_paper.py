"""The reproduction suite: the committed suite file is valid, a small suite runs end to
end (its upper bounds included) into a document with mean and spread over seeds and a
verdict per claim, a second invocation runs nothing again, and a bad suite is a one-line
error. The verdict rules themselves: tests/test_claims.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fleetsim.cli import main
from fleetsim.suite.claims import RULES
from fleetsim.suite.paper import DEFAULT_SUITE, load_suite, planned_runs
from tests.test_outputs import jsonl

SUITE = """
seeds: [0, 5]
reduced:
  seeds: [0, 1]
  set: {rounds: "2", training.local_steps: "2", eval.every: "1", eval.max_samples: "32",
        workers.backend: local}
experiments:
  - name: memory
    title: Memory-constrained smoke fleet
    scenario: scenarios/smoke.yaml
    policies: [caff, lora, head_only]
    params: {caff: {models: [gpt-2x64]}}
    upper_bound: true
    claims:
      - {claim: caff_accuracy, rivals: [lora, head_only]}
      - {claim: lora_memory, rivals: [lora]}
    fairness: true
  - name: width
    title: Width methods
    scenario: scenarios/smoke.yaml
    policies: [slt, heterofl]
    upper_bound: true
    claims: [{claim: slt_ahead, rivals: [heterofl]}]
"""


def mean_ok_peak(run_dir: Path) -> float:
    """The mean peak memory (MB) of a run's contributing device-rounds, from its records."""
    peaks = [d["peak_mem_bytes"] / 2**20 for d in jsonl(run_dir / "devices.jsonl")
             if d["status"] == "ok"]
    return sum(peaks) / len(peaks)


def interval_text(values: list[float], digits: int = 2) -> str:
    """mean [95% interval] of two values: mean ± 12.706 * s / sqrt(2), s = |a - b| / sqrt(2)."""
    a, b = values
    mean, half = (a + b) / 2, 12.706 * abs(a - b) / 2
    return f"{mean:.{digits}f} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def verdict_of(row: str) -> str:
    """A claim table row's verdict (the cell before the reason)."""
    return row.split(" | ")[-2]


def test_committed_suite_covers_the_papers_comparisons(tmp_path: Path) -> None:
    suite = load_suite(DEFAULT_SUITE)
    runs = list(planned_runs(suite, DEFAULT_SUITE, tmp_path))  # loads every scenario
    assert len(runs) == sum(len(e.policies) + e.upper_bound
                            for e in suite.experiments) * len(suite.seeds)
    assert len(suite.seeds) >= 3 and len(suite.reduced.seeds) >= 2
    policies = {p for e in suite.experiments for p in e.policies}
    assert policies >= {"caff", "lora", "fedavg", "head_only", "small_model", "slt",
                        "heterofl", "fedrolex", "feddropout"}
    claims = {c.claim for e in suite.experiments for c in e.claims}
    assert claims == set(RULES) - {"upload_parity"}  # left out for time (suite.yaml)
    partitions = {r.scenario.data.partition for r in runs}
    assert partitions == {"natural", "iid"}
    assert len({r.out_dir for r in runs}) == len(runs)
    # SLT's own setting: from scratch, the residual sliced, 100 devices, 10 a round, 50 rounds
    slt = [r.scenario for r in runs if r.policy == "slt"]
    assert slt and all(s.model.init == "scratch" and s.model.slice_residual for s in slt)
    assert all(sum(f.count for f in s.fleet) == 100 and s.selection.devices_per_round == 10
               and s.rounds >= 50 for s in slt)
    # every policy of every experiment, and its upper bound, has a tuning grid
    for exp in suite.experiments:
        grids = {**suite.tuning.grids, **exp.tuning.grids}
        assert set(exp.policies) | {"upper_bound"} <= set(grids), exp.name


@pytest.mark.slow
def test_small_suite_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite_file, out, doc = tmp_path / "suite.yaml", tmp_path / "runs", tmp_path / "doc.md"
    suite_file.write_text(SUITE)
    archive = tmp_path / "archive"
    args = ["paper", str(suite_file), "--reduced", "--out", str(out), "--doc", str(doc),
            "--archive", str(archive)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("final accuracy") == 14  # 5 policies, 2 upper bounds, 2 seeds
    text = doc.read_text()
    assert "seeds [0, 1]" in text and "The reduced suite" in text
    for title in ("Memory-constrained smoke fleet", "Width methods", "Fairness per device"):
        assert title in text
    claim_rows = [line for line in text.splitlines() if line.startswith("| CAFF +6.1")
                  or line.startswith("| LoRA needs") or line.startswith("| SLT far")]
    assert len(claim_rows) == 6  # each claim in the summary and in its experiment
    assert all("| not testable | 2 seeds < 3" in row for row in claim_rows)
    # the numbers behind them, from the run directories by hand: LoRA's mean peak memory
    # of contributing devices over CAFF's, per seed; 2 seeds: mean ± 12.706 * s / sqrt(2)
    ratio = [mean_ok_peak(out / "memory" / "lora" / f"seed{s}")
             / mean_ok_peak(out / "memory" / "caff" / f"seed{s}") for s in (0, 1)]
    assert sum(("| LoRA needs 2-3x the peak memory of CAFF | memory | lora | lora / caff mean "
                f"peak memory of contributing devices: {interval_text(ratio)} x | not testable "
                "| 2 seeds < 3 |") in row for row in claim_rows) == 2
    bound = [json.loads((out / "memory" / "upper_bound" / f"seed{s}" / "summary.json")
                        .read_text()) for s in (0, 1)]
    final = [jsonl(out / "memory" / "upper_bound" / f"seed{s}" / "rounds.jsonl")[-1]["accuracy"]
             for s in (0, 1)]
    start = [b["initial_accuracy"] for b in bound]
    headroom = [100 * (f - i) for f, i in zip(final, start, strict=True)]
    assert (f"| memory | pretrained | {interval_text(start, 4)} | {interval_text(final, 4)} | "
            f"{interval_text(headroom)} |") in text
    assert "| memory | pretrained | " in text and "| width | pretrained | " in text
    assert "| caff | " in text and " ± " in text
    assert (tmp_path / "figures" / "memory.png").stat().st_size > 0
    # everything finished: a second invocation only writes the document again
    assert main(args) == 0
    again = capsys.readouterr().out
    assert again.count("done before") == 14 and "final accuracy" not in again
    assert doc.read_text() == text
    # another machine: only the archive in the repository; nothing runs, the same document
    shutil.rmtree(out)
    assert main(args) == 0
    elsewhere = capsys.readouterr().out
    assert "14 finished runs restored" in elsewhere and "final accuracy" not in elsewhere
    assert doc.read_text() == text and "Wall time: " in text and "1 sitting" in text


def test_bad_suite_is_one_line_naming_the_key(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(SUITE.replace("[slt, heterofl]", "[slt, heterofl, hetero_fl]"))
    assert main(["paper", str(suite_file), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiments[1].policies" in err[0] and "hetero_fl" in err[0]
    suite_file.write_text(SUITE.replace("seeds: [0, 5]", "seedz: [0, 5]"))
    assert main(["paper", str(suite_file), "--out", str(tmp_path / "runs")]) == 2
    assert "seedz: unknown key (did you mean 'seeds'?)" in capsys.readouterr().err


@pytest.mark.slow
def test_the_reduced_suite_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`make paper-reduced`: the committed suite at CI size (about 3 minutes)."""
    doc = tmp_path / "results.md"
    assert main(["paper", "--reduced", "--out", str(tmp_path / "runs"), "--doc", str(doc)]) == 0
    suite = load_suite(DEFAULT_SUITE, reduced=True)
    assert capsys.readouterr().out.count("final accuracy") == \
        sum(len(e.policies) + e.upper_bound for e in suite.experiments) * len(suite.seeds)
    text = doc.read_text()
    assert all(f"## {e.title}" in text for e in suite.experiments)
    summary = text.split("## The papers' claims")[1].split("\n## ")[0]
    checks = [line for line in summary.splitlines() if line.startswith("| ")][1:]  # no head
    assert len(checks) == sum(len(e.claims) for e in suite.experiments)
    # the reduced suite has 2 seeds, fewer than the 3 a verdict needs: every claim is
    # not testable, and says so first
    assert len(suite.seeds) == 2
    assert all(verdict_of(line) == "not testable" for line in checks)
    assert all(line.split(" | ")[-1].startswith("2 seeds < 3") for line in checks)
