"""fleetsim: emulate an edge-device fleet that finetunes tiny pretrained Transformers by FL."""

from pathlib import Path

__version__ = "0.1.0"

# The project root holds devices/ and scenarios/ beside the package (editable install).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
