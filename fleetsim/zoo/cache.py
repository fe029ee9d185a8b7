"""Where fleetsim keeps what it builds once: the corpus and the pretrained zoo."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_root() -> Path:
    """$FLEETSIM_CACHE if set, else the user's cache directory for fleetsim."""
    return Path(os.environ.get("FLEETSIM_CACHE") or platformdirs.user_cache_dir("fleetsim"))
