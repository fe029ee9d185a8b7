"""Shared set-up: the tests' own cache directory, Hypothesis without wall-clock deadlines,
the `ray` marker on every test that uses Ray, and one real local Ray session shared by
the tests that need it."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from fleetsim import PROJECT_ROOT

SMOKE = PROJECT_ROOT / "scenarios" / "smoke.yaml"
TEST_CACHE = PROJECT_ROOT / ".test-cache"


def seeded_test_cache() -> Path:
    """The tests' own cache (data, pretrained weights), never written to the user's: it
    starts from a copy of what the user's cache holds (read only; the recipe stamp
    retrains weights that are stale), the rest is prepared on first use and kept
    between test runs."""
    from fleetsim.zoo.cache import cache_root

    user = cache_root()
    for kind in ("shakespeare", "zoo"):
        for item in (user / kind).iterdir() if (user / kind).is_dir() else ():
            target = TEST_CACHE / kind / item.name
            if not target.exists() and user != TEST_CACHE:
                target.parent.mkdir(parents=True, exist_ok=True)
                copy = shutil.copytree if item.is_dir() else shutil.copy2
                copy(item, target)
    return TEST_CACHE


# Subprocesses and Ray workers inherit it.
os.environ["FLEETSIM_CACHE"] = str(seeded_test_cache())
# the cost model's error the README claims over the zoo (benchmarks/cost_error.py)
PEAK_TOLERANCE = 0.032
# a loaded 2-core machine makes wall-clock deadlines flaky; examples stay few instead
settings.register_profile("fleetsim", deadline=None)
settings.load_profile("fleetsim")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses Ray is marked `ray` (pytest -m "not ray" leaves them out)."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray with 2 CPUs, started once for the whole test run."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    yield
    ray.shutdown()


def predicted_peak(scenario: Any, spec: str) -> int:
    """The cost model's peak for a plan of the scenario's model under its training
    settings."""
    from fleetsim.device.cost import parse_plan, predict_peak_bytes
    from fleetsim.types import OptimizerSpec
    from fleetsim.zoo.model import ZOO

    t, config = scenario.training, ZOO[scenario.model.name].config
    plan = parse_plan(spec, config, t.batch_size,
                      OptimizerSpec(t.optimizer.name, t.optimizer.momentum))
    return predict_peak_bytes(config, plan, scenario.data.seq_len)


def run_yaml(tmp_path: Path, text: str) -> tuple[dict[str, Any], Path]:
    """Write a scenario, run it through the engine quietly; (summary, output dir)."""
    from fleetsim.config.scenario import load_scenario
    from fleetsim.runtime.engine import run_scenario
    from fleetsim.runtime.session import RunSetup
    from fleetsim.views.monitor import PlainObserver

    source, out = tmp_path / "scenario.yaml", tmp_path / "out"
    source.write_text(text)
    with (tmp_path / "log").open("w") as log:
        summary = asyncio.run(run_scenario(RunSetup(load_scenario(source), source), out,
                                           PlainObserver(out, log)))
    return summary, out


def suite_error(tmp_path: Path, suite: str, old: str, new: str) -> Any:
    """The ConfigError that loading `suite` with `old` replaced by `new` raises."""
    from fleetsim.errors import ConfigError
    from fleetsim.suite.paper import load_suite

    path = tmp_path / "suite.yaml"
    assert old in suite
    path.write_text(suite.replace(old, new))
    with pytest.raises(ConfigError) as err:
        load_suite(path)
    return err.value
