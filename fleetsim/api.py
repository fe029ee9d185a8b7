"""fleetsim as a library: run a scenario, resume or compare runs, read a run back. The
command line is a thin layer over these functions.

    import fleetsim
    result = fleetsim.run("scenarios/smoke.yaml", rounds=2, training__lr=1e-4)
    result.summary["final_accuracy"], result.rounds[-1]["accuracy"]
    result.to_pandas("devices")          # with pandas installed (the `pandas` extra)

A scenario is a file, a dict in the scenario file's schema, or a loaded `Scenario`;
keyword overrides use `__` for a key path's dots (`training__lr=1e-4` is `--set
training.lr=1e-4`). Runs block until done, inside a running event loop (Jupyter) too:
there the run gets a loop of its own in a thread. Progress: the live dashboard in a
terminal, else a progress bar (`progress=` "live", "bar", "lines" or "none").
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fleetsim.errors import ConfigError
from fleetsim.views.metrics import read_jsonl

if TYPE_CHECKING:
    from typing import TypeAlias

    import pandas

    from fleetsim.config.scenario import Scenario

    ScenarioLike: TypeAlias = str | Path | Mapping[str, Any] | Scenario

Progress = Literal["live", "bar", "lines", "none"]
FROM_DICT = Path("<dict>")  # what errors name for a scenario given as a dict
T = TypeVar("T")


@dataclass(frozen=True)
class RunResult:
    """A run's records as plain Python values: `rounds` (rounds.jsonl), `devices`
    (devices.jsonl, one per selected device and round) and `summary` (empty for a run
    that did not finish), read from its directory `dir`."""

    dir: Path
    summary: dict[str, Any]
    rounds: list[dict[str, Any]] = field(repr=False)
    devices: list[dict[str, Any]] = field(repr=False)

    def to_pandas(self, table: Literal["rounds", "devices"] = "rounds") -> pandas.DataFrame:
        """The rounds or the device records as a DataFrame (needs pandas)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install 'fleetsim[pandas]'") from None
        return pandas.DataFrame(self.rounds if table == "rounds" else self.devices)


@dataclass(frozen=True)
class Comparison:
    """One scenario under several policies: a row of measures per policy (as
    `fleetsim compare` writes to comparison.csv) and each policy's run."""

    dir: Path
    rows: list[dict[str, Any]]
    runs: dict[str, RunResult]


def load_run(run_dir: str | Path) -> RunResult:
    """A run directory's records; ConfigError if it holds no run."""
    run_dir = Path(run_dir)
    if not (run_dir / "rounds.jsonl").is_file():
        raise ConfigError(run_dir, "rounds.jsonl", "not a run directory (no rounds.jsonl)")
    from fleetsim.views.metrics import load_run as load

    data = load(run_dir)
    return RunResult(run_dir, data.summary, data.rounds, data.devices)


def run(scenario: ScenarioLike, *, out: str | Path | None = None,
        progress: Progress | None = None, dry_run: bool = False,
        settings: Mapping[str, str] = {}, **overrides: Any) -> RunResult:
    """Run a scenario into `out` (default: a fresh folder under the scenario's
    output.dir) and return its records. `settings`: `--set` overrides as text;
    `overrides`: Python values by key path (`training__lr=1e-4`)."""
    loaded, source = load_scenario_like(scenario, {**settings, **as_settings(overrides)})
    out_dir = output_dir(out, loaded.output.dir, loaded.name)
    play(loaded, source, out_dir, progress, dry_run=dry_run)
    return load_run(out_dir)


def resume(run_dir: str | Path, *, progress: Progress | None = None) -> RunResult:
    """Continue a run from its newest intact checkpoint (a complete run is returned as
    it is); ConfigError when it has no checkpoint to go on from."""
    from fleetsim.config.scenario import load_scenario
    from fleetsim.runtime.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    source = run_dir / "scenario.yaml"
    scenario = load_scenario(source)
    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        raise ConfigError(run_dir, "checkpoint", "no checkpoint: the run did not finish a "
                          "round; start it again with fleetsim run")
    if not is_complete(run_dir):
        play(scenario, source, run_dir, progress, resume=True)
    return load_run(run_dir)


def is_complete(run_dir: Path) -> bool:
    """The run played all its scenario's rounds and wrote its summary."""
    from fleetsim.config.strict import read_yaml

    if not (run_dir / "summary.json").is_file():
        return False
    rounds = read_yaml(run_dir / "scenario.yaml").get("rounds")
    return len(read_jsonl(run_dir / "rounds.jsonl")) == rounds


def compare(scenario: ScenarioLike, policies: Sequence[str], *, out: str | Path | None = None,
            progress: Progress | None = None, settings: Mapping[str, str] = {},
            modes: Sequence[str] = (), **overrides: Any) -> Comparison:
    """Run the scenario under each policy (its own params when it is the scenario's
    policy, else none) into OUT/<policy>/ and write comparison.csv, comparison.md and
    comparison.png in `out`. `modes` ("sync", "async"): each policy in each mode, as
    "<policy> (<mode>)" in OUT/<policy>-<mode>/, compared at equal simulated time."""
    from fleetsim.config.scenario import check_policy
    from fleetsim.views.compare import rows_of, with_policy, write_comparison
    from fleetsim.views.metrics import load_run as load
    from fleetsim.views.report import plot_runs

    loaded, source = load_scenario_like(scenario, {**settings, **as_settings(overrides)})
    if not policies:
        raise ConfigError(source, "policies", "name at least one policy")
    for mode in modes:
        if mode not in ("sync", "async"):
            raise ConfigError(source, "modes", f"{mode!r} is not a mode (sync, async)")
    variants = {f"{name} ({mode})" if modes else name: (name, mode_of(with_policy(
        loaded, name), mode)) for name in policies for mode in modes or [""]}
    for _, variant in variants.values():  # every policy checked before any run starts
        check_policy(variant, source)
    out_dir = output_dir(out, loaded.output.dir, f"{loaded.name}-compare",
                         marker="comparison.csv")
    run_dirs = {label: out_dir / (name.replace("/", "_").replace(":", "_")
                                  + (f"-{variant.selection.mode}" if modes else ""))
                for label, (name, variant) in variants.items()}
    for label, (_, variant) in variants.items():
        play(variant, source, run_dirs[label], progress)
    runs = [load(run_dirs[label], label) for label in variants]
    rows = rows_of(runs)
    write_comparison(out_dir, rows)
    plot_runs(runs, out_dir / "comparison.png")
    return Comparison(out_dir, rows, {name: load_run(d) for name, d in run_dirs.items()})


def mode_of(scenario: Scenario, mode: str) -> Scenario:
    """The scenario in `mode` ("sync" or "async"; "": as it is)."""
    if not mode:
        return scenario
    return scenario.model_copy(update={"selection": scenario.selection.model_copy(
        update={"mode": mode})})


def load_scenario_like(scenario: ScenarioLike, settings: Mapping[str, str] = {}
                       ) -> tuple[Scenario, Path]:
    """The scenario, validated and resolved, with `settings` (`--set` text) applied, and
    the path errors name."""
    from fleetsim.config.scenario import Scenario, from_raw, load_scenario

    if isinstance(scenario, str | Path):
        return load_scenario(scenario, settings), Path(scenario)
    if isinstance(scenario, Scenario):
        source = Path(f"<scenario {scenario.name}>")
        return from_raw(scenario.model_dump(mode="json", by_alias=True), source, settings), \
            source
    if isinstance(scenario, Mapping):
        return from_raw(scenario, FROM_DICT, settings), FROM_DICT
    raise TypeError(f"a scenario is a path, a dict or a Scenario, not {type(scenario)}")


def as_settings(overrides: Mapping[str, Any]) -> dict[str, str]:
    """Python keyword overrides as `--set` text (`training__lr=1e-4` -> training.lr)."""
    from fleetsim.suite.tuning import yaml_text

    return {key.replace("__", "."): yaml_text(value) for key, value in overrides.items()}


def output_dir(flag: str | Path | None, pattern: str, name: str,
               marker: str = "rounds.jsonl") -> Path:
    """The run's output directory, created now, before any work: a bad one costs nothing.
    An explicit one must not hold a run already; the default is a fresh folder."""
    if flag is None:
        base = Path(pattern.format(name=name)) / time.strftime("%Y%m%d-%H%M%S")
        out, n = base, 1
        while out.exists():  # two runs started in the same second
            out, n = base.with_name(f"{base.name}-{n}"), n + 1
    else:
        out = Path(flag)
        if (out / marker).exists():
            raise ConfigError(out, "--out", "already holds a run; choose another directory "
                              "(nothing was overwritten)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(out, "--out", f"cannot create the directory: {err.strerror}") \
            from None
    return out


def play(scenario: Scenario, source: Path, out_dir: Path, progress: Progress | None,
         dry_run: bool = False, resume: bool = False) -> dict[str, Any]:
    """The one path every run takes: hosts launched (on this thread: Ray starts on the
    main thread) while the engine imports, then every round, watched as `progress` says
    (default: live in a terminal, else a progress bar). Returns the summary."""
    hosts = None if dry_run else launch_hosts_while_importing(scenario)
    from fleetsim.runtime.engine import run_scenario
    from fleetsim.runtime.session import RunSetup
    from fleetsim.views.monitor import make_observer

    setup = RunSetup(scenario, source, dry_run, hosts)
    view = progress or ("live" if sys.stdout.isatty() else "bar")
    with make_observer(view, out_dir, scenario.output.tensorboard) as observer:
        return run_to_end(run_scenario(setup, out_dir, observer, resume))


def run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, also where an event loop is
    already running in this thread (Jupyter): then in a loop of its own, in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1, thread_name_prefix="fleetsim-run") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def launch_hosts_while_importing(scenario: Scenario) -> Any:
    """Ray's start and the hosts' own imports (seconds, in their processes) overlap the
    engine's imports here (torch, transformers: seconds too), which a thread does: Ray
    must start on the main thread."""
    import threading
    from importlib import import_module

    from fleetsim.runtime.cluster import launch_hosts

    imports = threading.Thread(target=import_module, args=("fleetsim.runtime.engine",), daemon=True)
    imports.start()
    hosts = launch_hosts(scenario)
    imports.join()
    return hosts
