"""The command line as a user meets it: `fleetsim pretrain` and `fleetsim zoo` on a cache
of their own, the run flags --rounds, --seed and --dry-run (each changes what it says
and nothing else), and `fleetsim paper --only`. In-process (`fleetsim.cli.main`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fleetsim import PROJECT_ROOT
from fleetsim.cli import main
from fleetsim.views.metrics import read_jsonl
from fleetsim.zoo import pretrain
from fleetsim.zoo.model import ZOO, TinyGPT, TinyGPTConfig, ZooEntry

SMOKE = PROJECT_ROOT / "scenarios" / "smoke.yaml"
SMALL = ["--set", "workers.backend=local", "--set", "training.local_steps=2",
         "--set", "eval.max_samples=16"]


@pytest.fixture
def own_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A one-block model added to the zoo, an empty cache of our own, a fake corpus and
    a short recipe; returns the names of the models pretraining trained."""
    entry = ZooEntry("gpt-1x16", TinyGPTConfig(n_layer=1, n_embd=16, n_head=2),
                     pretrain_steps=6, pretrain_lr=3e-2, pretrain_batch=8)
    monkeypatch.setitem(ZOO, entry.name, entry)
    monkeypatch.setenv("FLEETSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "250")  # the zoo's table, whole
    monkeypatch.setattr(pretrain, "EVAL_EVERY", 3)
    monkeypatch.setattr(pretrain, "EVAL_WINDOWS", 8)
    rng = np.random.default_rng(0)
    text = rng.integers(3, 90, 2000).astype(np.uint8)
    monkeypatch.setattr(pretrain, "server_corpus", lambda: (text[:1500], text[1500:]))
    monkeypatch.setattr(pretrain, "reserved_plays", lambda: text[1500:])
    trained: list[str] = []
    train = pretrain._pretrain

    def counted(entry: ZooEntry, on_progress: Any) -> Path:
        trained.append(entry.name)
        return train(entry, on_progress)

    monkeypatch.setattr(pretrain, "_pretrain", counted)
    return trained


def zoo_rows(capsys: pytest.CaptureFixture) -> dict[str, list[str]]:
    """`fleetsim zoo`'s table: the cells of each model's row, by name."""
    assert main(["zoo"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells[0] in ZOO:
            rows[cells[0]] = cells
    return rows


def test_pretrain_then_zoo_shows_the_pretrained_scores(
        own_zoo: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = zoo_rows(capsys)
    assert list(rows) == list(ZOO)  # every model, in the zoo's order
    params = sum(p.numel() for p in TinyGPT(ZOO["gpt-1x16"].config).parameters())
    assert rows["gpt-1x16"][:5] == ["gpt-1x16", "1", "16", "2", f"{params:,}"]
    assert all(row[5:] == ["-", "-", "-"] for row in rows.values())  # nothing cached yet
    assert main(["pretrain", "gpt-1x16"]) == 0
    assert own_zoo == ["gpt-1x16"]
    capsys.readouterr()
    stamp = json.loads((tmp_path / "cache" / "zoo" / "gpt-1x16" / "pretrain.json").read_text())
    rows = zoo_rows(capsys)
    scores = [f"{stamp[k]['loss']:.3f} / {stamp[k]['accuracy']:.3f}"
              for k in ("validation", "reserved_plays")]
    assert rows["gpt-1x16"][5:] == [str(stamp["best_step"]), *scores]
    assert rows["gpt-2x64"][5:] == ["-", "-", "-"]  # the others are still not pretrained
    # a second request finds it cached: says so, trains nothing
    assert main(["pretrain", "gpt-1x16"]) == 0
    assert "gpt-1x16: cached" in capsys.readouterr().out and own_zoo == ["gpt-1x16"]
    assert main(["pretrain", "gpt-1x16", "gpt-3x33"]) == 2  # checked before anything runs
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpt-3x33" in err[0] and own_zoo == ["gpt-1x16"]


def run_records(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run directory's rounds and devices, wall time aside (it never repeats)."""
    rounds = [{k: v for k, v in r.items() if k != "wall_time_s"}
              for r in read_jsonl(out / "rounds.jsonl")]
    return rounds, read_jsonl(out / "devices.jsonl")


def test_run_flags_change_what_they_say(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert yaml.safe_load(SMOKE.read_text())["rounds"] == 3
    assert yaml.safe_load(SMOKE.read_text())["seed"] == 0
    run = ["run", str(SMOKE), *SMALL, "--rounds", "2"]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0
    rounds, devices = run_records(tmp_path / "a")
    assert [r["round"] for r in rounds] == [0, 1]  # --rounds 2 of the file's 3
    assert {d["round"] for d in devices} == {0, 1}
    printed = capsys.readouterr().out
    assert printed.count("\nround ") + printed.startswith("round ") == 2  # a line a round
    saved = yaml.safe_load((tmp_path / "a" / "scenario.yaml").read_text())
    assert (saved["rounds"], saved["seed"]) == (2, 0)
    # --seed 1 is the scenario with seed 1 in its file
    assert main([*run, "--seed", "1", "--out", str(tmp_path / "b")]) == 0
    seeded = yaml.safe_load(SMOKE.read_text()) | {"seed": 1}
    (tmp_path / "seed1.yaml").write_text(yaml.safe_dump(seeded))
    assert main(["run", str(tmp_path / "seed1.yaml"), *SMALL, "--rounds", "2",
                 "--out", str(tmp_path / "c")]) == 0
    assert run_records(tmp_path / "b") == run_records(tmp_path / "c")
    assert run_records(tmp_path / "b") != (rounds, devices)  # and not seed 0's run
    b_devices = run_records(tmp_path / "b")[1]
    assert [(d["round"], d["device_id"]) for d in b_devices] != \
        [(d["round"], d["device_id"]) for d in devices]  # another selection
    # --dry-run: the same clock, no training and no evaluation
    assert main([*run, "--dry-run", "--out", str(tmp_path / "d")]) == 0
    dry_rounds, dry_devices = run_records(tmp_path / "d")
    assert [(d["device_id"], d["status"], d["compute_s"]) for d in dry_devices] == \
        [(d["device_id"], d["status"], d["compute_s"]) for d in devices]
    assert [r["sim_time_s"] for r in dry_rounds] == [r["sim_time_s"] for r in rounds]
    assert all(r["accuracy"] is None for r in dry_rounds)
    assert all(r["accuracy"] is not None for r in rounds)
    assert {d["host"] for d in dry_devices if d["status"] == "ok"} == {"dry-run"}
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["final_accuracy"] is None and summary["rounds_completed"] == 2


SUITE = """
seeds: [0]
reduced:
  seeds: [0]
  set: {rounds: "1", training.local_steps: "1", eval.every: "1", eval.max_samples: "16",
        workers.backend: local}
experiments:
  - name: first
    title: The first experiment
    scenario: scenarios/smoke.yaml
    policies: [head_only]
  - name: second
    title: The second experiment
    scenario: scenarios/smoke.yaml
    policies: [fedavg]
"""


def test_paper_only_runs_and_reports_the_named_experiment(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    suite, out, doc = tmp_path / "suite.yaml", tmp_path / "runs", tmp_path / "doc.md"
    suite.write_text(SUITE)
    args = ["paper", str(suite), "--reduced", "--out", str(out), "--doc", str(doc),
            "--no-archive", "--jobs", "1"]
    assert main([*args, "--only", "third"]) == 2  # not an experiment of the suite
    assert "third" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--only", "second"]) == 0
    assert capsys.readouterr().out.count("final accuracy") == 1  # one policy, one seed
    assert (out / "second" / "fedavg" / "seed0" / "summary.json").is_file()
    assert not (out / "first").exists()
    text = doc.read_text()
    assert "The second experiment" in text and "The first experiment" not in text
    assert "--only second" in text  # the command that wrote it
