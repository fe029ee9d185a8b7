"""The suite's archive: packing keeps what the document reads, byte-stable; unpacking
writes finished runs back without touching finished runs already there; records merge;
a run whose scenario changed since is not taken as finished."""

from __future__ import annotations

import json
from pathlib import Path

from fleetsim.config.scenario import load_scenario
from fleetsim.runtime.batch import BatchRun
from fleetsim.suite.archive import pack_records, pack_run, unpack
from fleetsim.suite.paper import finished_before
from fleetsim.views.metrics import load_run
from tests.test_claims import ROOT, fake_run

SMOKE = ROOT / "scenarios" / "smoke.yaml"


def test_a_packed_run_unpacks_to_the_same_records(tmp_path: Path) -> None:
    out, archive, elsewhere = tmp_path / "out", tmp_path / "archive", tmp_path / "other"
    fake_run(out / "exp" / "caff" / "seed0", 0.3, 0.4, skipped=1)
    pack_run(out / "exp" / "caff" / "seed0", out, archive)
    packed = {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    assert {p.name for p in packed} == {"summary.json", "scenario.yaml", "rounds.jsonl.gz",
                                        "devices.jsonl.gz"}
    pack_run(out / "exp" / "caff" / "seed0", out, archive)  # again: the same bytes
    assert packed == {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    assert unpack(archive, elsewhere) == 1
    for name in ("summary.json", "scenario.yaml", "rounds.jsonl", "devices.jsonl"):
        assert (elsewhere / "exp" / "caff" / "seed0" / name).read_bytes() == \
            (out / "exp" / "caff" / "seed0" / name).read_bytes()
    assert load_run(elsewhere / "exp" / "caff" / "seed0").devices[1]["status"] == "skipped"


def test_unpack_keeps_finished_runs_and_merges_records(tmp_path: Path) -> None:
    out, archive = tmp_path / "out", tmp_path / "archive"
    fake_run(tmp_path / "a" / "exp" / "lora" / "seed0", 0.3, 0.45)
    pack_run(tmp_path / "a" / "exp" / "lora" / "seed0", tmp_path / "a", archive)
    (tmp_path / "a" / "durations.json").write_text(json.dumps({"exp/lora/seed0": 5.0,
                                                                "exp/caff/seed0": 7.0}))
    pack_records(tmp_path / "a", archive)
    fake_run(out / "exp" / "lora" / "seed0", 0.3, 0.35)  # finished here: stays
    (out / "durations.json").write_text(json.dumps({"exp/lora/seed0": 9.0}))
    assert unpack(archive, out) == 0
    assert load_run(out / "exp" / "lora" / "seed0").summary["final_accuracy"] == 0.35
    assert json.loads((out / "durations.json").read_text()) == {"exp/lora/seed0": 9.0,
                                                                "exp/caff/seed0": 7.0}
    assert unpack(tmp_path / "no-archive", out) == 0


def test_a_run_is_finished_only_with_its_summary_duration_and_own_scenario(
        tmp_path: Path) -> None:
    scenario = load_scenario(SMOKE)
    run_dir = tmp_path / "exp" / "caff" / "seed0"
    run = BatchRun(scenario, SMOKE, run_dir)
    fake_run(run_dir, 0.3, 0.4, scenario=scenario)
    timed = {"exp/caff/seed0": 3.0}
    assert finished_before(run, timed, tmp_path)
    assert not finished_before(run, {}, tmp_path)
    edited = BatchRun(scenario.model_copy(update={"rounds": scenario.rounds + 1}), SMOKE,
                      run_dir)
    assert not finished_before(edited, timed, tmp_path)
    (run_dir / "summary.json").unlink()
    assert not finished_before(run, timed, tmp_path)
