"""Shared fixtures: one real local Ray session for every test that needs it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

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
