"""The suite's results in compact form, kept in the repository beside the suite file, so
a suite run in several sittings continues on another machine and its document can be
recomputed without the run directories.

An archive mirrors the output folder: for every finished run (its summary.json present)
it keeps what the document is computed from, the resolved scenario and the summary as
they are and the round and device records gzipped (byte-stable: packing the same run
twice gives the same bytes), plus the suite's records of time (`RECORDS`). Unpacking writes those
files back into run directories that do not hold a finished run; a run whose scenario
changed since is run again (`paper._run_jobs` compares the scenario it would run).
"""

from __future__ import annotations

import gzip
import json
from functools import partial
from pathlib import Path
from typing import Any

from fleetsim.views.metrics import replace_atomically, write_atomic

KEPT = ("summary.json", "scenario.yaml")  # kept as they are
ZIPPED = ("rounds.jsonl", "devices.jsonl")  # kept gzipped, as <name>.gz
DURATIONS = "durations.json"  # seconds per finished run, by its place under the output
SITTINGS = "sittings.json"  # wall time per sitting of the suite, by its start
RECORDS = (DURATIONS, SITTINGS)  # JSON objects; merging keeps every key of both


def pack_run(run_dir: Path, out_dir: Path, archive: Path) -> None:
    """Copy one finished run's records into the archive, at its place under `out_dir`."""
    target = archive / run_dir.relative_to(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        write_atomic(target / name, (run_dir / name).read_text())
    for name in ZIPPED:
        data = gzip.compress((run_dir / name).read_bytes(), compresslevel=9, mtime=0)
        replace_atomically(target / f"{name}.gz", partial(Path.write_bytes, data=data))


def pack_records(out_dir: Path, archive: Path) -> None:
    for name in RECORDS:
        if (out_dir / name).is_file():
            archive.mkdir(parents=True, exist_ok=True)
            write_atomic(archive / name, (out_dir / name).read_text())


def unpack(archive: Path, out_dir: Path) -> int:
    """Write every archived run into `out_dir` where no finished run stands yet, and merge
    the archived records into those of `out_dir` (its own win); returns the runs written."""
    written = 0
    for summary in sorted(archive.rglob("summary.json")) if archive.is_dir() else []:
        source = summary.parent
        run_dir = out_dir / source.relative_to(archive)
        if (run_dir / "summary.json").is_file():
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ZIPPED:
            write_atomic(run_dir / name,
                         gzip.decompress((source / f"{name}.gz").read_bytes()).decode())
        for name in KEPT[::-1]:  # the summary last: it marks the run finished
            write_atomic(run_dir / name, (source / name).read_text())
        written += 1
    for name in RECORDS:
        if (archive / name).is_file():
            merged = {**read_record(archive / name), **read_record(out_dir / name)}
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(out_dir / name, json.dumps(merged, indent=1, sort_keys=True))
    return written


def read_record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}

