"""docs/policies.md works as written: its example policy, saved as a file, passes the
page's own test through fleetsim.testing, validates, and trains in a short real run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetsim.cli import main
from fleetsim.views.metrics import read_jsonl

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
    assert main(["run", str(scenario), "--out", str(out), "--no-live", "--rounds", "2",
                 "--set", "workers.backend=local"]) == 0
    trained = [d["plan"] for d in read_jsonl(out / "devices.jsonl") if d["status"] == "ok"]
    assert trained and all(p.startswith(("train=block.1,head;", "train=head;"))
                           for p in trained)
