"""The exceptions fleetsim raises on purpose."""

from __future__ import annotations

from pathlib import Path


class FleetsimError(Exception):
    """Root of fleetsim's own errors."""


class ConfigError(FleetsimError):
    """Bad user input: names the file and the key path. The CLI exits 2 with one line."""

    def __init__(self, path: str | Path, key: str, message: str) -> None:
        self.path, self.key, self.message = str(path), key, message
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str]]:
        """Pickled by its parts: a run in a worker process raises it in the driver too."""
        return ConfigError, (self.path, self.key, self.message)


class DeviceOOM(FleetsimError):
    """A device's training crossed its memory budget (the update is lost)."""

    def __init__(self, requested_bytes: int, cap_bytes: int) -> None:
        self.requested_bytes, self.cap_bytes = requested_bytes, cap_bytes
        super().__init__(f"device out of memory: {requested_bytes} bytes > cap {cap_bytes}")
