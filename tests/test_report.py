"""What a run leaves for people, each number checked against values computed here from
the records (and accuracies counted by hand from the run's final checkpoint): summary.json
with fairness per class, the CSV files, the report's terminal table and its figure (read
back through matplotlib), and TensorBoard scalars. The comparison table and figure:
tests/test_outputs.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fleetsim.cli import main
from fleetsim.device.cost import parse_plan, predict_peak_bytes
from fleetsim.types import OptimizerSpec
from fleetsim.zoo.model import ZOO
from tests.test_monitor import record
from tests.test_outputs import SCENARIO as OUTPUTS_SCENARIO
from tests.test_outputs import (
    eval_windows,
    final_state,
    hand_count,
    jsonl,
    pretrained_state,
    records,
    saved_figures,
)

# The Pi Zeros held to 7 MB: on gpt-2x64 at batch 8 with Adam CAFF's last:1 (block.1 and
# the head) fits there, last:2 does not (test_caff_trains_fewer_blocks_where_memory_is_short
# checks that with the cost model); the Pi 4s' 512 MB fit the whole model. The fleet of
# tests/test_outputs.py with no deadline to speak of: every selected device contributes.
SCENARIO = OUTPUTS_SCENARIO.replace("name: outputs", "name: report").replace(
    "deadline_s: 0.7", "deadline_s: 100000")
CLASSES = ["rpi4", "rpi_zero2w"]  # sorted, as every per-class view lists them


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    (root / "s.yaml").write_text(SCENARIO)
    assert main(["run", str(root / "s.yaml"), "--out", str(root / "run"), "--no-live"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def counted(finished_run: Path) -> dict[str, float]:
    """Accuracies counted by hand (tests/test_outputs.hand_count): the pretrained and the
    final model on the run's evaluation windows, the final one on each class's own."""
    devices = jsonl(finished_run / "devices.jsonl")
    final, start = final_state(finished_run), pretrained_state("gpt-2x64")
    out = {}
    for key, state, ids in [("initial", start, None), ("final", final, None)] + [
            (c, final, sorted({d["device_id"] for d in devices if d["device_class"] == c}))
            for c in CLASSES]:
        correct, positions, _ = hand_count(state, "gpt-2x64", eval_windows(finished_run, ids))
        assert 0 < correct < positions and positions % 80 == 0
        out[key] = correct / positions
    return out


def test_caff_trains_fewer_blocks_where_memory_is_short() -> None:
    config = ZOO["gpt-2x64"].config
    adam = OptimizerSpec("adam")
    need = {p: predict_peak_bytes(config, parse_plan(p, config, 8, adam), 80) / 2**20
            for p in ("last:1", "last:2")}
    assert need["last:1"] <= 7 < need["last:2"]  # what SCENARIO's comment says


def test_summary_values_by_hand(finished_run: Path, counted: dict[str, float]) -> None:
    rounds, devices, summary = records(finished_run)
    assert summary["rounds_completed"] == len(rounds) == 2
    assert [r["round"] for r in rounds] == [0, 1]
    assert summary["initial_accuracy"] == pytest.approx(counted["initial"], abs=1e-12)
    assert summary["final_accuracy"] == rounds[-1]["accuracy"]
    assert summary["final_accuracy"] == pytest.approx(counted["final"], abs=1e-12)
    assert summary["best_accuracy"] == max(r["accuracy"] for r in rounds)
    assert summary["sim_time_s"] == rounds[-1]["sim_time_s"]
    assert summary["bytes_up"] == sum(d["bytes_up"] for d in devices)
    assert summary["bytes_down"] == sum(d["bytes_down"] for d in devices)
    assert summary["device_rounds"] == {"selected": 10, "completed": 10, "stragglers": 0,
                                        "offline": 0, "oom": 0, "failed": 0, "skipped": 0}
    assert summary["rounds_aggregated"] == 2
    for r in rounds:  # each round's counts are its device records'
        mine = [d for d in devices if d["round"] == r["round"]]
        assert (r["selected"], r["completed"]) == \
            (len(mine), sum(d["status"] == "ok" for d in mine))
        assert r["bytes_up"] == sum(d["bytes_up"] for d in mine)


def test_summary_fairness_by_hand(finished_run: Path, counted: dict[str, float]) -> None:
    fair = json.loads((finished_run / "summary.json").read_text())["fairness"]
    classes = fair["classes"]
    assert list(classes) == CLASSES
    # 2 rounds, every device selected: 6 Pi 4 device-rounds and 4 Pi Zero ones, all of
    # them contributing (no deadline, each plan fits): shares 6/10 and 4/10
    assert [(classes[c]["selected"], classes[c]["contributed"]) for c in CLASSES] == \
        [(6, 6), (4, 4)]
    assert [classes[c]["contributed_share_of_selected"] for c in CLASSES] == [1.0, 1.0]
    assert [classes[c]["share_of_contributions"] for c in CLASSES] == [0.6, 0.4]
    # CAFF: the Pi 4s train both blocks of gpt-2x64, the 7 MB Pi Zeros only the last
    assert classes["rpi4"]["blocks_trained_mean"] == 2.0
    assert classes["rpi4"]["blocks_trained"] == {"2": 6}
    assert classes["rpi_zero2w"]["blocks_trained_mean"] == 1.0
    assert classes["rpi_zero2w"]["blocks_trained"] == {"1": 4}
    assert fair["gap_contributed_share_of_selected"] == 0.0
    # the final model's accuracy on each class's own windows, counted by hand
    for c in CLASSES:
        assert classes[c]["accuracy"] == pytest.approx(counted[c], abs=1e-12)
    assert counted["rpi4"] != counted["rpi_zero2w"]  # a gap to measure
    assert fair["gap_accuracy"] == pytest.approx(abs(counted["rpi4"] - counted["rpi_zero2w"]))


def cell_of(value: object) -> str:
    """What a CSV cell must hold for a JSON value: nested values as JSON."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def test_csv_files_match_the_json_lines(finished_run: Path) -> None:
    for name in ("rounds", "devices"):
        with (finished_run / f"{name}.csv").open() as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        lines = jsonl(finished_run / f"{name}.jsonl")
        assert reader.fieldnames == list(lines[0])
        assert len(rows) == len(lines) == {"rounds": 2, "devices": 10}[name]
        for row, line in zip(rows, lines, strict=True):
            assert row == {k: cell_of(v) for k, v in line.items()}
            for k, v in line.items():  # and the cells read back as the same values
                if isinstance(v, float):
                    assert float(row[k]) == v
                elif isinstance(v, dict):
                    assert json.loads(row[k]) == v


def test_report_prints_and_draws(finished_run: Path, counted: dict[str, float],
                                 capsys: pytest.CaptureFixture) -> None:
    with saved_figures() as figures:
        assert main(["report", str(finished_run)]) == 0
    rounds, devices, summary = records(finished_run)
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert (f"accuracy {counted['initial']:.4f} -> {counted['final']:.4f}" in head
            and "2 rounds" in head)
    by_class = {c: [d for d in devices if d["device_class"] == c] for c in CLASSES}
    for c, mine in by_class.items():
        row = next(line.split() for line in out.splitlines() if line.split()[:1] == [c])
        peak = max(d["peak_mem_bytes"] for d in mine) / 2**20
        cap = sum(d["mem_cap_bytes"] for d in mine) / len(mine) / 2**20
        assert cap == {"rpi4": 512.0, "rpi_zero2w": 7.0}[c]  # the scenario's budgets
        up = sum(d["bytes_up"] for d in mine) / 1e6
        blocks = {"rpi4": 2.0, "rpi_zero2w": 1.0}[c]
        assert row == [c, str(len(mine)), str(len(mine)), "1.00", "0", "0", f"{peak:.1f}",
                       f"{cap:.1f}", f"{up:.1f}", f"{blocks:.2f}", f"{counted[c]:.4f}"]
    # the figure, as saved to report.png, read back panel by panel
    fig = figures["report.png"]
    assert (finished_run / "report.png").is_file()
    accuracy, by_time, peaks, volume, share, fair = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [
        "accuracy against round", "accuracy against simulated time",
        "peak memory per class (bars) and cap (line)", "bytes (cumulative)",
        "participation: share of selected that contributed",
        "fairness: accuracy on each class's own data"]
    curve = [counted["initial"]] + [r["accuracy"] for r in rounds]
    assert list(accuracy.lines[0].get_xdata()) == [0, 1, 2]
    assert list(accuracy.lines[0].get_ydata()) == pytest.approx(curve, abs=1e-12)
    assert list(by_time.lines[0].get_xdata()) == [0.0] + [r["sim_time_s"] for r in rounds]
    assert list(by_time.lines[0].get_ydata()) == pytest.approx(curve, abs=1e-12)
    up = [sum(d["bytes_up"] for d in devices if d["round"] == r) / 1e6 for r in (0, 1)]
    down = [sum(d["bytes_down"] for d in devices if d["round"] == r) / 1e6 for r in (0, 1)]
    assert [line.get_label() for line in volume.lines] == ["caff up", "caff down"]
    assert list(volume.lines[0].get_ydata()) == pytest.approx([up[0], up[0] + up[1]])
    assert list(volume.lines[1].get_ydata()) == pytest.approx([down[0], down[0] + down[1]])
    for ax in (peaks, share, fair):
        assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    heights = {ax: [p.get_height() for p in ax.containers[0]] for ax in (peaks, share, fair)}
    assert heights[peaks] == pytest.approx(
        [max(d["peak_mem_bytes"] for d in by_class[c]) / 2**20 for c in CLASSES])
    assert heights[peaks][0] > heights[peaks][1]  # the whole model against one block
    caps = [s[0][1] for lines in peaks.collections for s in lines.get_segments()]
    assert caps == pytest.approx([512.0, 7.0])
    assert heights[share] == [1.0, 1.0]
    assert heights[fair] == pytest.approx([counted[c] for c in CLASSES], abs=1e-12)


def test_report_lists_a_class_never_selected(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    """A hand-written run in which no Pi Zero was ever selected: the summary's fairness
    section still measured the class (accuracy 0.2); the table and the figure show it."""
    device = {"device_class": "rpi4", "round": 0, "plan": "train=head;frozen=",
              "status": "ok", "peak_mem_bytes": 3 * 2**20, "mem_cap_bytes": 512 * 2**20,
              "bytes_up": 2_000_000, "bytes_down": 1_000_000}
    (tmp_path / "devices.jsonl").write_text(json.dumps(device) + "\n")
    (tmp_path / "rounds.jsonl").write_text(json.dumps(
        {"round": 0, "sim_time_s": 5.0, "accuracy": 0.4, "bytes_up": 2_000_000,
         "bytes_down": 1_000_000}) + "\n")
    blank = {"selected": 0, "contributed": 0, "contributed_share_of_selected": None,
             "share_of_contributions": 0.0, "blocks_trained_mean": 0.0,
             "blocks_trained": {}, "accuracy": 0.2}
    (tmp_path / "summary.json").write_text(json.dumps({
        "scenario": "hand", "policy": "caff", "model": "gpt-2x64", "initial_accuracy": 0.3,
        "final_accuracy": 0.4, "fairness": {"classes": {
            "rpi4": {**blank, "selected": 1, "contributed": 1,
                     "contributed_share_of_selected": 1.0, "share_of_contributions": 1.0,
                     "accuracy": 0.5},
            "rpi_zero2w": blank}}}))
    with saved_figures() as figures:
        assert main(["report", str(tmp_path)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.split()[:1] in (["rpi4"], ["rpi_zero2w"])}
    assert rows["rpi4"] == ["rpi4", "1", "1", "1.00", "0", "0", "3.0", "512.0", "2.0",
                            "0.00", "0.5000"]
    assert rows["rpi_zero2w"] == ["rpi_zero2w", "0", "0", "-", "0", "0", "0.0", "-", "0.0",
                                  "0.00", "0.2000"]
    peaks, share, fair = (figures["report.png"].axes[i] for i in (2, 4, 5))
    for ax in (peaks, share, fair):
        assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [p.get_height() for p in fair.containers[0]] == [0.5, 0.2]
    assert [p.get_height() for p in share.containers[0]] == [1.0, 0.0]
    assert [s[0][1] for lines in peaks.collections for s in lines.get_segments()] == [512.0]


def test_report_of_a_non_run_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


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
