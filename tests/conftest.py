"""Shared fixtures: one real local Ray session for every test that needs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetsim import PROJECT_ROOT

SMOKE = PROJECT_ROOT / "scenarios" / "smoke.yaml"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray with 2 CPUs, started once for the whole test run."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    yield
    ray.shutdown()


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
