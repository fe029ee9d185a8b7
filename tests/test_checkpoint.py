"""Checkpoints hold data, not code, and a damaged one is never trusted: resume falls back
to the previous intact checkpoint (and ends with the same records as a run never
stopped, the policy's own state included), or refuses with one line and exit 2, leaving
every file as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fleetsim.cli import main
from fleetsim.errors import ConfigError
from fleetsim.runtime.checkpoint import from_plain, load_checkpoint, to_plain
from fleetsim.views.metrics import read_jsonl

POLICY = Path(__file__).parent / "policies" / "alternating.py"
SCENARIO = f"""
name: ckpt
seed: 3
rounds: 3
model: {{name: gpt-2x64}}
fleet:
  - {{class: phone_low, count: 3, availability: {{kind: markov, mean_online_s: 20,
     mean_offline_s: 10}}, bandwidth_walk: {{sigma: 0.3, every_s: 5}}}}
  - {{class: phone_mid, count: 3}}
selection: {{devices_per_round: 3, deadline_s: 100000}}
training: {{local_steps: 2, batch_size: 8, lr: 0.05}}
policy: {{name: "{POLICY}:Alternating"}}
workers: {{backend: local}}
eval: {{every: 1, max_samples: 40}}
"""


def records(run_dir: Path) -> list[list[dict]]:
    return [[{k: v for k, v in row.items() if k not in ("wall_time_s", "host")}
             for row in read_jsonl(run_dir / name)] for name in ("rounds.jsonl", "devices.jsonl")]


def files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished three-round run of the stateful policy."""
    root = tmp_path_factory.mktemp("ckpt")
    (root / "scenario.yaml").write_text(SCENARIO)
    assert main(["run", str(root / "scenario.yaml"), "--out", str(root / "run"),
                 "--no-live"]) == 0
    return root / "run"


def test_only_the_last_two_checkpoints_are_kept_and_no_pickle(finished: Path) -> None:
    names = sorted(p.name for p in (finished / "checkpoint").iterdir())
    assert names == ["round-1.json", "round-1.safetensors", "round-2.json",
                     "round-2.safetensors"]
    saved = json.loads((finished / "checkpoint" / "round-2.json").read_text())
    assert saved["policy"] == {"planned": 3} and saved["round"] == 2


def test_resume_falls_back_past_a_damaged_checkpoint(finished: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    newest = run / "checkpoint" / "round-2.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # cut short
    assert load_checkpoint(run).round == 1  # type: ignore[union-attr]
    assert main(["resume", str(run), "--no-live"]) == 0
    assert records(run) == records(finished)  # round 2 replayed as it first ran
    assert (run / "summary.json").is_file()


def test_resume_refuses_when_no_checkpoint_is_intact(
        finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    for r in (1, 2):
        body = run / "checkpoint" / f"round-{r}.json"
        body.write_text(body.read_text().replace('"clock_s": ', '"clock_s": 1'))
    before = files(run)
    assert main(["resume", str(run), "--no-live"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no intact checkpoint" in err[0] and "round-2" in err[0]
    assert files(run) == before


def test_an_old_pickle_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "latest.json").write_text('{"round": 0, "state": "s", "run": "run-0.pkl"}')
    (folder / "run-0.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ConfigError, match="old checkpoint format"):
        load_checkpoint(tmp_path)


def test_plain_values_round_trip_arrays_tuples_and_generators() -> None:
    rng = np.random.default_rng(5)
    value = [{"rng": rng.bit_generator.state, "last": (1.5, np.array([True, False])),
              "walk": np.arange(3.0), "steps": np.int64(4)}]
    arrays: dict[str, np.ndarray] = {}
    plain = json.loads(json.dumps(to_plain(value, "~fleet/", arrays)))
    back = from_plain(plain, arrays)
    assert back[0]["rng"] == rng.bit_generator.state and back[0]["steps"] == 4
    assert isinstance(back[0]["last"], tuple) and back[0]["last"][1].tolist() == [True, False]
    np.testing.assert_array_equal(back[0]["walk"], np.arange(3.0))


def test_versions_sharing_tensors_are_saved_once(tmp_path: Path) -> None:
    """An asynchronous run's older versions share the tensors a step left alone: each
    array is written once and every version loads back equal."""
    from fleetsim.runtime.checkpoint import FOLDER, Checkpoint, save_checkpoint

    frozen, trained = np.arange(250_000, dtype=np.float32), np.ones(10, np.float32)
    state = {"embed": frozen, "head": trained + 1}
    older = {3: {"embed": frozen, "head": trained}, 4: {"embed": frozen, "head": trained}}
    (tmp_path / "rounds.jsonl").touch(), (tmp_path / "devices.jsonl").touch()
    save_checkpoint(tmp_path, Checkpoint(4, state, None, 1.0, None, {}, {}, older))
    assert (tmp_path / FOLDER / "round-4.safetensors").stat().st_size < 1.1 * frozen.nbytes
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and loaded.versions is not None
    assert sorted(loaded.versions) == [3, 4]
    for v, version in older.items():
        assert all(np.array_equal(loaded.versions[v][k], version[k]) for k in version)
    assert all(np.array_equal(loaded.state[k], state[k]) for k in state)
