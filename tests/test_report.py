"""What a run leaves for people: fairness per class in summary.json, CSV files, the
report's summary and figure, the comparison figure, and TensorBoard scalars."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fleetsim.cli import main
from fleetsim.views.metrics import read_jsonl
from tests.test_monitor import record

SCENARIO = """
name: report
rounds: 2
model: {name: gpt-2x64}
fleet:
  - {class: rpi_zero2w, count: 2}
  - {class: rpi4, count: 3}
selection: {devices_per_round: 5, deadline_s: 100000}
training: {local_steps: 2, batch_size: 8, optimizer: {name: adam}, lr: 0.002}
policy: {name: caff, params: {models: [gpt-2x64]}}
workers: {backend: local}
eval: {every: 1, max_samples: 40}
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    (root / "s.yaml").write_text(SCENARIO)
    assert main(["run", str(root / "s.yaml"), "--out", str(root / "run"), "--no-live"]) == 0
    return root / "run"


def test_summary_has_fairness_per_class(finished_run: Path) -> None:
    fair = json.loads((finished_run / "summary.json").read_text())["fairness"]
    assert set(fair["classes"]) == {"rpi_zero2w", "rpi4"}
    for name, c in fair["classes"].items():
        assert c["selected"] == 2 * (2 if name == "rpi_zero2w" else 3)
        assert 0 <= c["accuracy"] <= 1 and 0 <= c["contributed_share_of_selected"] <= 1
    shares = [c["share_of_contributions"] for c in fair["classes"].values()]
    assert sum(shares) == pytest.approx(1.0)
    # CAFF: the 64 MB Pi Zero trains fewer blocks than the 512 MB Pi 4
    assert fair["classes"]["rpi_zero2w"]["blocks_trained_mean"] \
        <= fair["classes"]["rpi4"]["blocks_trained_mean"]
    accuracies = [c["accuracy"] for c in fair["classes"].values()]
    assert fair["gap_accuracy"] == pytest.approx(max(accuracies) - min(accuracies))


def test_csv_files_match_the_json_lines(finished_run: Path) -> None:
    for name in ("rounds", "devices"):
        with (finished_run / f"{name}.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        lines = read_jsonl(finished_run / f"{name}.jsonl")
        assert len(rows) == len(lines)
        assert rows[0]["round"] == str(lines[0]["round"])


def test_report_prints_and_draws(finished_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert "rpi_zero2w" in out and "accuracy" in out
    assert (finished_run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_non_run_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_compare_draws_every_policy(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SCENARIO.replace("rounds: 2", "rounds: 1"))
    assert main(["compare", str(tmp_path / "s.yaml"), "--policies", "caff,head_only",
                 "--out", str(tmp_path / "cmp"), "--no-live"]) == 0
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 10_000


def test_tensorboard_gets_each_round(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fleetsim.views.export import TensorBoardObserver

    observer = TensorBoardObserver(tmp_path)
    for r in range(3):
        observer.on_round(record(r, 0.4 + r / 100), [])
    observer.on_finish({})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    accuracy = events.Scalars("round/accuracy")
    assert [e.step for e in accuracy] == [0, 1, 2]
    assert accuracy[-1].value == pytest.approx(0.42)
    assert accuracy[-1].wall_time == pytest.approx(300.0)  # simulated time
