"""The numbers people read, checked against values computed here from the records: the
comparison table (comparison.csv, comparison.md) and figure of a real `fleetsim compare`,
the next-character accuracy against a hand count, and fairness per class on hand-built
records. Nothing below recomputes a number with the function that produced it; the
helpers here (records, hand counts, the figures a command saved) are shared with
tests/test_report.py."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from fleetsim.cli import main
from fleetsim.views.fairness import fairness

MIB = 2**20
POLICIES = ("caff", "fedavg", "head_only")
# Two Pi Zeros held to 7 MB and three Pi 4s (512 MB); a deadline of 0.7 s. On gpt-2x64 at
# batch 8 with Adam (`fleetsim cost`): full finetuning needs 9.01 MB, last:2 8.90 MB,
# last:1 5.22 MB and the head 3.18 MB; a Pi Zero needs 0.72-0.74 s for a head round
# (0.57 s once): so FedAvg skips the Pi Zeros, CAFF and head_only give them the head and
# they mostly straggle; the Pi 4s train everything (CAFF, FedAvg) or the head.
SCENARIO = """
name: outputs
rounds: 2
model: {name: gpt-2x64}
fleet:
  - {class: rpi_zero2w, count: 2, overrides: {memory_mb: 7}}
  - {class: rpi4, count: 3}
selection: {devices_per_round: 5, deadline_s: 0.7}
training: {local_steps: 2, batch_size: 8, optimizer: {name: adam}, lr: 0.002}
policy: {name: caff, params: {models: [gpt-2x64]}}
workers: {backend: local}
eval: {every: 1, max_samples: 40}
"""


# ---- helpers shared with tests/test_report.py -------------------------------------------

def jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file, parsed here (not with fleetsim's reader)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def records(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """rounds.jsonl, devices.jsonl and summary.json of a run directory."""
    return (jsonl(run_dir / "rounds.jsonl"), jsonl(run_dir / "devices.jsonl"),
            json.loads((run_dir / "summary.json").read_text()))


@contextmanager
def saved_figures() -> Iterator[dict[str, Figure]]:
    """Every matplotlib Figure saved inside the block, by the file name it was saved to:
    the very figure a command wrote, to read its axes back."""
    saved: dict[str, Figure] = {}
    original = Figure.savefig

    def record(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> Any:
        saved[Path(fname).name] = self
        return original(self, fname, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", record)
        yield saved


def hand_count(state: dict[str, np.ndarray], model_name: str, windows: np.ndarray
               ) -> tuple[int, int, float]:
    """(correct, positions, summed loss) of the model with weights `state` on `windows`,
    one window at a time: the argmax of each position's logits found in a plain loop and
    compared with the next character, the loss as log(sum exp) - the target's logit."""
    from fleetsim.zoo.model import ZOO, TinyGPT

    model = TinyGPT(ZOO[model_name].config)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    model.eval()
    correct = positions = 0
    loss = 0.0
    for window in windows:
        tokens = [int(c) for c in window]
        with torch.no_grad():
            logits = model(torch.tensor([tokens[:-1]])).logits[0].double().tolist()
        for row, target in zip(logits, tokens[1:], strict=True):
            best = 0
            for i, value in enumerate(row):
                if value > row[best]:
                    best = i
            correct += best == target
            positions += 1
            top = max(row)
            loss += top + math.log(sum(math.exp(v - top) for v in row)) - row[target]
    return correct, positions, loss


def eval_windows(run_dir: Path, device_ids: Sequence[int] | None = None) -> np.ndarray:
    """The evaluation windows of a run: up to eval.max_samples of the test windows of
    the clients of `device_ids` (default: every device), as the run drew them."""
    from fleetsim.config.scenario import load_scenario
    from fleetsim.runtime.session import eval_sample, load_data

    scenario = load_scenario(run_dir / "scenario.yaml")
    clients = load_data(scenario, run_dir / "scenario.yaml").clients
    chosen = range(len(clients)) if device_ids is None else device_ids
    return eval_sample([clients[i] for i in chosen], scenario.eval.max_samples, scenario.seed)


def final_state(run_dir: Path) -> dict[str, np.ndarray]:
    from fleetsim.runtime.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir)
    assert ckpt is not None
    return ckpt.state


def pretrained_state(model_name: str) -> dict[str, np.ndarray]:
    from fleetsim.zoo.pretrain import load_pretrained

    return load_pretrained(model_name)


# ---- fleetsim compare ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Figure]]:
    """One real compare run of three policies (local backend, about 4 s) and the figures
    it saved."""
    root = tmp_path_factory.mktemp("outputs")
    (root / "s.yaml").write_text(SCENARIO)
    with saved_figures() as figures:
        assert main(["compare", str(root / "s.yaml"), "--policies", ",".join(POLICIES),
                     "--out", str(root / "cmp"), "--no-live"]) == 0
    return root / "cmp", figures


def expected_row(run_dir: Path, common_s: float) -> dict[str, Any]:
    """A comparison row computed here from the run's records."""
    rounds, devices, summary = records(run_dir)
    ok = [d for d in devices if d["status"] == "ok"]
    peaks = [d["peak_mem_bytes"] for d in ok]
    evaluated = [r for r in rounds if r["accuracy"] is not None]
    by_then = [r["accuracy"] for r in evaluated if r["sim_time_s"] <= common_s]
    return {
        "model": summary["model"],
        "final_accuracy": evaluated[-1]["accuracy"],
        "accuracy_at_common_time": by_then[-1] if by_then else summary["initial_accuracy"],
        "common_time_s": common_s,
        "peak_mem_max_mb": max(peaks) / MIB,
        "peak_mem_mean_mb": sum(peaks) / len(peaks) / MIB,
        "mem_cap_mean_mb": sum(d["mem_cap_bytes"] for d in ok) / len(ok) / MIB,
        "mb_up": sum(d["bytes_up"] for d in devices) / 1e6,
        "mb_down": sum(d["bytes_down"] for d in devices) / 1e6,
        "tflops": sum(d["flops"] for d in ok) / 1e12,
        "contributed_share": len(ok) / len(devices),
        "oom": sum(d["status"] == "oom" for d in devices),
        "stragglers": sum(d["status"] == "straggler" for d in devices),
        "skipped": sum(d["status"] == "skipped" for d in devices),
    }


def expected_rows(out: Path) -> dict[str, dict[str, Any]]:
    ends = [jsonl(out / p / "rounds.jsonl")[-1]["sim_time_s"] for p in POLICIES]
    return {p: expected_row(out / p, min(ends)) for p in POLICIES}


COLUMNS = ["policy", "model", "final_accuracy", "accuracy_at_common_time", "common_time_s",
           "peak_mem_max_mb", "peak_mem_mean_mb", "mem_cap_mean_mb", "mb_up", "mb_down",
           "tflops", "contributed_share", "oom", "stragglers", "skipped"]


def test_the_compare_fleet_exercises_what_the_table_counts(compared: tuple[Path, Any]) -> None:
    out, _ = compared
    statuses = {p: [(d["device_class"], d["status"]) for d in jsonl(out / p / "devices.jsonl")]
                for p in POLICIES}
    # FedAvg's full model (9.01 MB) never fits a 7 MB Pi Zero: 2 devices x 2 rounds skipped
    assert statuses["fedavg"].count(("rpi_zero2w", "skipped")) == 4
    assert statuses["fedavg"].count(("rpi4", "ok")) == 6
    for p in ("caff", "head_only"):  # the head fits; the 0.7 s deadline catches most
        assert {s for c, s in statuses[p] if c == "rpi_zero2w"} == {"ok", "straggler"}
        assert {s for c, s in statuses[p] if c == "rpi4"} == {"ok"}


def test_comparison_csv_equals_the_records(compared: tuple[Path, Any]) -> None:
    out, _ = compared
    with (out / "comparison.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        table = list(reader)
    assert [row["policy"] for row in table] == list(POLICIES)
    want = expected_rows(out)
    for row in table:
        expected = want[row["policy"]]
        for column, value in expected.items():
            cell = row[column]
            if isinstance(value, str):
                assert cell == value, (row["policy"], column)
            elif isinstance(value, int):
                assert cell == str(value), (row["policy"], column)
            else:
                assert float(cell) == pytest.approx(value, rel=1e-12, abs=1e-15), \
                    (row["policy"], column)
    # the hand-derived facts behind those numbers: FedAvg contributed 6 of 10
    assert want["fedavg"]["contributed_share"] == 0.6 and want["fedavg"]["skipped"] == 4
    # FedAvg (no Pi Zero waits) ends first; CAFF's second round ends after that, so its
    # accuracy at the common time is its first round's
    caff, fedavg = jsonl(out / "caff" / "rounds.jsonl"), jsonl(out / "fedavg" / "rounds.jsonl")
    assert want["caff"]["common_time_s"] == fedavg[-1]["sim_time_s"]
    assert caff[0]["sim_time_s"] <= fedavg[-1]["sim_time_s"] < caff[1]["sim_time_s"]
    assert want["caff"]["accuracy_at_common_time"] == caff[0]["accuracy"]
    assert want["caff"]["peak_mem_max_mb"] > want["head_only"]["peak_mem_max_mb"]


def test_comparison_md_equals_the_records(compared: tuple[Path, Any]) -> None:
    out, _ = compared
    lines = (out / "comparison.md").read_text().splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[1] == "|" + "---|" * len(COLUMNS)
    want = expected_rows(out)
    assert len(lines) == 2 + len(POLICIES)
    for line, policy in zip(lines[2:], POLICIES, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS) and cells[0] == policy
        for column, cell in zip(COLUMNS[1:], cells[1:], strict=True):
            value = want[policy][column]
            if isinstance(value, str | int):
                assert cell == str(value), (policy, column)
                continue
            digits = 4 if abs(value) < 10 else 1  # the table's rule: 4 decimals below 10
            assert len(cell.split(".")[1]) == digits, (policy, column, cell)
            assert abs(float(cell) - value) <= 0.5 * 10**-digits + 1e-12, (policy, column)


def bars(ax: Any) -> np.ndarray:
    """The heights of each bar series of an axis (a row per run, a column per class)."""
    return np.array([[patch.get_height() for patch in container]
                     for container in ax.containers])


def test_comparison_figure_plots_every_policy(compared: tuple[Path, dict[str, Figure]]) -> None:
    out, figures = compared
    axes = figures["comparison.png"].axes
    assert len(axes) == 6
    accuracy, by_time, peaks, volume, share, fair = axes
    assert [line.get_label() for line in accuracy.lines] == list(POLICIES)
    for i, p in enumerate(POLICIES):
        rounds, devices, summary = records(out / p)
        assert list(accuracy.lines[i].get_xdata()) == [0, 1, 2]
        assert list(accuracy.lines[i].get_ydata()) == \
            [summary["initial_accuracy"]] + [r["accuracy"] for r in rounds]
        assert list(by_time.lines[i].get_xdata()) == [0.0] + [r["sim_time_s"] for r in rounds]
        up, down = volume.lines[2 * i], volume.lines[2 * i + 1]
        per_round = [[d for d in devices if d["round"] == r] for r in (0, 1)]
        assert list(up.get_ydata()) == pytest.approx(np.cumsum(
            [sum(d["bytes_up"] for d in ds) / 1e6 for ds in per_round]))
        assert list(down.get_ydata()) == pytest.approx(np.cumsum(
            [sum(d["bytes_down"] for d in ds) / 1e6 for ds in per_round]))
    classes = ["rpi4", "rpi_zero2w"]
    assert [t.get_text() for t in share.get_xticklabels()] == classes
    # participation: the share of selected device-rounds that contributed, by hand
    participation = []
    for p in POLICIES:
        devices = jsonl(out / p / "devices.jsonl")
        participation.append([
            sum(d["status"] == "ok" for d in devices if d["device_class"] == c)
            / sum(d["device_class"] == c for d in devices) for c in classes])
    assert bars(share) == pytest.approx(np.array(participation))
    assert participation[1][1] == 0.0  # FedAvg: no Pi Zero contributed
    # peak memory: the largest peak of a contributing device of the class (0 without one)
    top = [[max([d["peak_mem_bytes"] / MIB for d in jsonl(out / p / "devices.jsonl")
                 if d["device_class"] == c and d["status"] == "ok"], default=0.0)
            for c in classes] for p in POLICIES]
    assert bars(peaks) == pytest.approx(np.array(top))
    assert top[1][1] == 0.0 and top[0][0] > top[2][0]  # CAFF's Pi 4s train more than a head
    # the caps, one line per class: the mean budget of the class's selected devices
    caps = [segment[0][1] for lines in peaks.collections for segment in lines.get_segments()]
    assert caps == pytest.approx([512.0, 7.0])
    assert bars(fair) == pytest.approx(np.array([
        [records(out / p)[2]["fairness"]["classes"][c]["accuracy"] for c in classes]
        for p in POLICIES]))


# ---- the accuracy metric against a hand count ------------------------------------------------

def test_accuracy_and_loss_are_a_hand_count() -> None:
    from fleetsim.device.training import accuracy_and_loss, evaluate
    from fleetsim.zoo.data import encode
    from fleetsim.zoo.model import ZOO, TinyGPT

    text = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to "
            "suffer the slings and arrows of outrageous fortune, or to take arms against a "
            "sea of troubles, and by opposing end them.")
    codes = encode(text)
    windows = np.stack([codes[i:i + 33] for i in range(0, 5 * 33, 33)])  # 5 windows of 32
    state = pretrained_state("gpt-2x64")
    correct, positions, loss = hand_count(state, "gpt-2x64", windows)
    assert positions == 5 * 32 and 0 < correct < positions  # a real count, not all or none
    model = TinyGPT(ZOO["gpt-2x64"].config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    # batches of 2 (the last one short), and the windows split in two parts
    parts = [evaluate(model, windows[:3], batch_size=2), evaluate(model, windows[3:], 2)]
    assert [p["correct"] for p in parts] == \
        [hand_count(state, "gpt-2x64", windows[:3])[0],
         hand_count(state, "gpt-2x64", windows[3:])[0]]
    assert [p["positions"] for p in parts] == [3 * 32, 2 * 32]
    result = accuracy_and_loss(parts)
    assert result["accuracy"] == correct / positions
    assert result["loss"] == pytest.approx(loss / positions, rel=1e-5)


# ---- fairness per class on hand-built records ---------------------------------------------

def device(cls: str, status: str, plan: str = "train=head;frozen=embed,block.0,block.1"
           ) -> dict[str, Any]:
    return {"device_class": cls, "status": status, "plan": plan}


def test_fairness_per_class_by_hand() -> None:
    two = "train=block.0,block.1,head;frozen=embed"
    one = "train=block.1,head;frozen=embed,block.0"
    wide = "train=embed,block.0,block.1,head;frozen=;slices=block.0:1h64u"
    devices = [device("big", "ok", two), device("big", "ok", wide), device("big", "oom", two),
               device("small", "ok", one), device("small", "straggler", one),
               device("small", "skipped", "-"), device("small", "ok"),
               device("idle", "skipped", "-")]
    result = fairness(devices, {"big": 0.5, "small": 0.25, "idle": None, "unseen": 0.1})
    classes = result["classes"]
    # big: 3 selected, 2 ok (2 blocks each); small: 4 selected, 2 ok (1 block, the head
    # only: 0); idle: 1 selected, none ok; 4 contributions in all
    assert classes["big"] == {
        "selected": 3, "contributed": 2, "contributed_share_of_selected": 2 / 3,
        "share_of_contributions": 2 / 4, "blocks_trained_mean": 2.0,
        "blocks_trained": {2: 2}, "accuracy": 0.5}
    assert classes["small"] == {
        "selected": 4, "contributed": 2, "contributed_share_of_selected": 2 / 4,
        "share_of_contributions": 2 / 4, "blocks_trained_mean": 0.5,
        "blocks_trained": {0: 1, 1: 1}, "accuracy": 0.25}
    assert classes["idle"]["contributed_share_of_selected"] == 0.0
    assert classes["idle"]["share_of_contributions"] == 0.0
    assert classes["idle"]["accuracy"] is None
    # a class no device of which was ever selected still has its accuracy reported: the
    # fleet's least served class must not drop out of the table or the gap
    assert classes["unseen"]["selected"] == 0 and classes["unseen"]["accuracy"] == 0.1
    assert classes["unseen"]["contributed_share_of_selected"] is None
    assert list(classes) == ["big", "idle", "small", "unseen"]
    # gaps: accuracy 0.5 (big) - 0.1 (unseen); share of selected 2/3 (big) - 0 (idle)
    assert result["gap_accuracy"] == pytest.approx(0.4)
    assert result["gap_contributed_share_of_selected"] == pytest.approx(2 / 3)
