"""docs/policies.md works as written: its example policy, saved as a file, passes the
page's own test through fleetsim.testing, validates, and trains in a short real run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetsim.cli import main
from tests.test_outputs import jsonl

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "policies.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE, re.S)


@pytest.fixture()
def cautious(tmp_path: Path) -> Path:
    source = tmp_path / "cautious.py"
    source.write_text(BLOCKS[0])
    return source


def test_the_pages_test_passes_on_its_example(cautious: Path) -> None:
    code = BLOCKS[1].replace('"cautious.py:Cautious"', repr(f"{cautious}:Cautious"))
    namespace: dict = {}
    exec(compile(code, "docs/policies.md", "exec"), namespace)  # noqa: S102 - our own page
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0]()


def test_the_example_validates_and_runs(cautious: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text((ROOT / "scenarios" / "smoke.yaml").read_text().replace(
        "name: fedavg", f"name: {cautious}:Cautious\n  params: {{k: 1}}"))
    assert main(["validate", str(scenario)]) == 0
    out = tmp_path / "run"
    # every device selected every round, the first 4 to upload kept: 2 stragglers a round,
    # selected again in the next
    assert main(["run", str(scenario), "--out", str(out), "--no-live", "--rounds", "2",
                 "--set", "workers.backend=local", "--set", "selection.devices_per_round=4",
                 "--set", "selection.over_selection=0.5"]) == 0
    # k = 1: block.1 and the head, unless the device straggled (or ran out of memory) in
    # the round before: then the head alone; every plan fits the smoke fleet's budgets
    devices = jsonl(out / "devices.jsonl")
    missed = {(d["round"] + 1, d["device_id"]) for d in devices
              if d["status"] in ("straggler", "oom")}
    expected = [("train=head;frozen=embed,block.0,block.1" if (d["round"], d["device_id"])
                 in missed else "train=block.1,head;frozen=embed,block.0") for d in devices]
    assert [d["plan"] for d in devices] == expected
    assert [d["round"] for d in devices] == [0] * 6 + [1] * 6
    assert [d["status"] for d in devices].count("straggler") == 4
    assert sum(p.startswith("train=head;") for p in expected) == 2  # both kinds of plan
