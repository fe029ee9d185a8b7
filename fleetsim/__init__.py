"""fleetsim: emulate an edge-device fleet that finetunes tiny pretrained Transformers by FL.

    import fleetsim
    result = fleetsim.run("scenarios/smoke.yaml", rounds=2)

`run`, `resume`, `compare` and `load_run` are fleetsim.api's (imported on first use, so
that `import fleetsim` stays light).
"""

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

# The project root holds devices/ and scenarios/ beside the package (editable install).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
API = ("run", "resume", "compare", "load_run", "RunResult", "Comparison")
__all__ = ["PROJECT_ROOT", "__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from fleetsim import api

        return getattr(api, name)
    raise AttributeError(f"module 'fleetsim' has no attribute {name!r}")
