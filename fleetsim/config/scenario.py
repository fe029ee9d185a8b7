"""Scenario files: one strict, validated config tree.

A scenario names everything a run needs. Unknown keys and wrong types are errors that
name the file and the key path (with a suggestion for a misspelt key); `load_scenario`
raises `ConfigError`, which the CLI turns into one line and exit code 2.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from fleetsim import PROJECT_ROOT
from fleetsim.config.strict import Strict, parse_model, read_yaml, set_key_path, suggest
from fleetsim.errors import ConfigError

DEVICES_DIR = PROJECT_ROOT / "devices"
class DeviceProfile(Strict):
    """A device class: what one device of it can do (see devices/*.yaml)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    memory_mb: float = Field(gt=0, description="training memory budget, MiB")
    flops_per_s: float = Field(gt=0, description="sustained training FLOP/s")
    uplink_bps: float = Field(gt=0)
    downlink_bps: float = Field(gt=0)
    latency_s: float = Field(ge=0)
    compute_jitter: float = Field(default=0.1, ge=0, le=2)


class ClientFilter(Strict):
    min_train_samples: int = Field(default=8, ge=1)
    max_train_samples: int | None = Field(default=None, ge=1)


class DataConfig(Strict):
    dataset: Literal["shakespeare"] = "shakespeare"
    partition: Literal["natural", "iid", "dirichlet"] = "natural"
    alpha: float = Field(default=0.5, gt=0, description="Dirichlet concentration")
    seq_len: int = Field(default=80, ge=8, le=512)
    train_fraction: float = Field(default=0.8, gt=0, lt=1)
    # with eval.split validation: the last share of each client's train windows, held out
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)
    clients: ClientFilter = ClientFilter()


class ModelConfig(Strict):
    name: str = "gpt-4x128"
    # pretrained: the zoo model's pretrained weights; scratch: TinyGPT's random
    # initialisation, seeded from the scenario seed (no pretraining)
    init: Literal["pretrained", "scratch"] = "pretrained"
    # width-reduced sub-models (SLT, HeteroFL, FedRolex, Federated Dropout, memory_of
    # "width:S") narrow the residual width too, as the SLT reference code does
    slice_residual: bool = False


class AvailabilityConfig(Strict):
    """When the entry's devices are online (see fleetsim/world/availability.py)."""

    kind: Literal["always", "bernoulli", "markov", "trace"] = "always"
    p: float = Field(default=0.9, gt=0, le=1, description="bernoulli: online per round")
    mean_online_s: float = Field(default=3600.0, gt=0, description="markov")
    mean_offline_s: float = Field(default=600.0, gt=0, description="markov")
    trace: str | None = Field(default=None, description="trace file, relative to the scenario")

    @model_validator(mode="after")
    def _trace_named(self) -> AvailabilityConfig:
        if (self.kind == "trace") != (self.trace is not None):
            raise ValueError("set trace (a file) exactly when kind is trace")
        return self


class WalkConfig(Strict):
    """A log-normal random walk of the link bandwidths: every `every_s` of simulated
    time both are multiplied by exp(sigma * z), the product kept within [low, high]."""

    sigma: float = Field(gt=0, le=2)
    every_s: float = Field(default=60.0, gt=0)
    low: float = Field(default=0.1, gt=0)
    high: float = Field(default=2.0, gt=0)


class ThrottleConfig(Strict):
    """Thermal throttling: after `after_s` of computing in a round, the FLOP rate drops
    to `factor` of its value."""

    after_s: float = Field(ge=0)
    factor: float = Field(gt=0, le=1)


class FleetEntry(Strict):
    device_class: str = Field(alias="class")
    count: int = Field(ge=1)
    overrides: dict[str, Any] = {}
    # The memory budget as the memory of training a plan (e.g. "width:0.25": the whole
    # model at width 0.25, as the SLT paper sets constraints) on the scenario's model,
    # batch size, optimizer and sequence length; resolved into overrides.memory_mb.
    memory_of: str | None = None
    availability: AvailabilityConfig = AvailabilityConfig()
    bandwidth_walk: WalkConfig | None = None
    throttle: ThrottleConfig | None = None


class EventConfig(Strict):
    """From `at_s` (until `until_s`) the named devices keep these factors of their
    profile's budgets: "at 3600 s the low-end phones keep 40% of their memory"."""

    at_s: float = Field(ge=0)
    until_s: float | None = Field(default=None, gt=0)
    device_class: str | None = Field(default=None, alias="class")
    devices: list[int] | None = None
    memory_factor: float = Field(default=1.0, gt=0)
    flops_factor: float = Field(default=1.0, gt=0)
    uplink_factor: float = Field(default=1.0, gt=0)
    downlink_factor: float = Field(default=1.0, gt=0)


class FaultConfig(Strict):
    """Injected faults. host_crash: the host training the first device of each listed
    round dies mid-job (Ray restarts it). corrupt_upload: each update is corrupted in
    transit with `probability` (or in the listed rounds); the checksum catches it.
    slow_host: host `host` takes `delay_s` longer per job (wall time only)."""

    kind: Literal["host_crash", "corrupt_upload", "slow_host"]
    rounds: list[Annotated[int, Field(ge=0)]] = []  # 0-based; past the last: never
    probability: float = Field(default=0.0, ge=0, le=1)
    host: int = Field(default=0, ge=0)
    delay_s: float = Field(default=0.0, ge=0)


class StalenessConfig(Strict):
    """The weight s(tau) of an update tau server steps old: constant 1, polynomial
    (1 + tau)^-a, or hinge (1 up to b steps, then 1 / (a (tau - b) + 1))."""

    kind: Literal["constant", "polynomial", "hinge"] = "polynomial"
    a: float = Field(default=0.5, ge=0)
    b: int = Field(default=4, ge=0)


class FedBuffConfig(Strict):
    """Asynchronous (buffered) aggregation, FedBuff: `concurrency` devices train at
    once; the server steps after every `buffer_size` arrived updates (1: FedAsync)."""

    concurrency: int = Field(default=10, ge=1)
    buffer_size: int = Field(default=5, ge=1)
    staleness: StalenessConfig = StalenessConfig()
    server_lr: float = Field(default=1.0, gt=0)
    max_staleness: int | None = Field(default=None, ge=0, description="older: dropped")
    wait_s: float = Field(default=60.0, gt=0, description="retry when no device is free")


class SelectionConfig(Strict):
    # sync: rounds with a barrier; async: FedBuff, `rounds` counts server steps and
    # deadline_s bounds each job
    mode: Literal["sync", "async"] = "sync"
    devices_per_round: int = Field(default=10, ge=1)
    over_selection: float = Field(default=0.0, ge=0, le=5)
    deadline_s: float = Field(default=3600.0, gt=0)
    min_updates: int = Field(default=1, ge=1)
    fedbuff: FedBuffConfig = FedBuffConfig()


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)


class TrainingConfig(Strict):
    local_steps: int | None = Field(default=None, ge=1, description="default 10")
    local_epochs: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=16, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    lr: float = Field(default=0.05, gt=0)
    schedule: Literal["constant", "cosine"] = "constant"
    lr_min_ratio: float = Field(default=0.1, ge=0, le=1, description="cosine floor, x lr")

    @model_validator(mode="before")
    @classmethod
    def _default_steps(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("local_steps") is None \
                and raw.get("local_epochs") is None:
            return {**raw, "local_steps": 10}
        return raw

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingConfig:
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError("set exactly one of local_steps and local_epochs")
        return self


class PolicyConfig(Strict):
    name: str = "fedavg"
    params: dict[str, Any] = {}


class WorkersConfig(Strict):
    count: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    backend: Literal["ray", "local"] = "ray"
    address: str | None = None
    threads_per_host: int = Field(default=1, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"
    gpus_per_host: float = Field(default=0.0, ge=0, le=8, description="Ray GPU fraction")


class EvalConfig(Strict):
    every: int = Field(default=5, ge=1, description="evaluate every k rounds (and the last)")
    max_samples: int = Field(default=2000, ge=1, description="windows evaluated")
    # test: the clients' test windows, devices train on all train windows; validation: the
    # windows data.validation_fraction holds out of train (devices train on the rest)
    split: Literal["test", "validation"] = "test"


class OutputConfig(Strict):
    dir: str = "runs/{name}"
    tensorboard: bool = False  # also write TensorBoard events (needs `tensorboard`)


class Scenario(Strict):
    name: str = "scenario"
    seed: int = Field(default=0, ge=0)
    rounds: int = Field(ge=1)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    fleet: list[FleetEntry] = Field(min_length=1)
    selection: SelectionConfig = SelectionConfig()
    training: TrainingConfig = TrainingConfig()
    policy: PolicyConfig = PolicyConfig()
    workers: WorkersConfig = WorkersConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    events: list[EventConfig] = []
    faults: list[FaultConfig] = []
    # Filled in by `resolve`: the device classes inline, so a written scenario stands alone.
    device_classes: dict[str, DeviceProfile] = {}

    @property
    def num_devices(self) -> int:
        return sum(entry.count for entry in self.fleet)


def load_scenario(path: str | Path, overrides: Mapping[str, str] = {}) -> Scenario:
    """Read, override (`a.b=value`), validate and resolve a scenario file."""
    path = Path(path)
    return from_raw(read_yaml(path), path, overrides)


def from_raw(raw: Mapping[str, Any], path: Path, overrides: Mapping[str, str] = {}
             ) -> Scenario:
    """Override, validate and resolve a raw scenario tree (a file's, a dict, a dumped
    Scenario); `path` is what errors name."""
    tree = copy.deepcopy(dict(raw))  # overrides change the tree in place
    apply_overrides(tree, overrides, path)
    return resolve(parse_model(Scenario, tree, path), path)


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, str], path: Path) -> None:
    """Apply `--set` overrides (key path -> YAML text) to a raw scenario tree in place."""
    for key_path, value in overrides.items():
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(path, key_path, f"--set value {value!r} is not valid YAML") from None
        set_key_path(raw, key_path, parsed, path)


def resolve(scenario: Scenario, path: Path) -> Scenario:
    """Load every device class the fleet names (unless inline) and check the overrides."""
    classes = dict(scenario.device_classes)
    scenario = scenario.model_copy(update={"fleet": [
        _memory_of(scenario, entry, path, i) for i, entry in enumerate(scenario.fleet)]})
    for i, entry in enumerate(scenario.fleet):
        if entry.device_class not in classes:
            classes[entry.device_class] = load_device_class(entry.device_class, path, i)
        parse_model(DeviceProfile, _with_overrides(classes[entry.device_class], entry), path,
                    prefix=f"fleet[{i}].overrides")
    scenario = scenario.model_copy(update={"fleet": [
        _trace_of(entry, path, i) for i, entry in enumerate(scenario.fleet)]})
    _check_events(scenario, path)
    check_names(scenario, path)
    if scenario.selection.min_updates > scenario.selection.devices_per_round:
        raise ConfigError(path, "selection.min_updates", "must not exceed devices_per_round")
    if scenario.selection.devices_per_round > scenario.num_devices:
        raise ConfigError(path, "selection.devices_per_round",
                          f"exceeds the fleet size ({scenario.num_devices})")
    return scenario.model_copy(update={"device_classes": classes})


def _trace_of(entry: FleetEntry, path: Path, index: int) -> FleetEntry:
    """The entry with its trace file made absolute (a resolved scenario reruns from
    anywhere), after checking that the file loads."""
    trace = entry.availability.trace
    if trace is None:
        return entry
    from fleetsim.world.availability import load_trace

    file = (path.parent / trace).resolve()
    try:
        load_trace(file, entry.count)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(path, f"fleet[{index}].availability.trace",
                          f"cannot read trace {str(file)!r}: {err}") from None
    availability = entry.availability.model_copy(update={"trace": str(file)})
    return entry.model_copy(update={"availability": availability})


def _check_events(scenario: Scenario, path: Path) -> None:
    classes = {entry.device_class for entry in scenario.fleet}
    for i, event in enumerate(scenario.events):
        if event.device_class is not None and event.device_class not in classes:
            raise ConfigError(path, f"events[{i}].class", f"no {event.device_class!r} in the "
                              f"fleet{suggest(event.device_class, sorted(classes))}")
        if event.devices and max(event.devices) >= scenario.num_devices:
            raise ConfigError(path, f"events[{i}].devices",
                              f"the fleet has devices 0..{scenario.num_devices - 1}")
        if event.until_s is not None and event.until_s <= event.at_s:
            raise ConfigError(path, f"events[{i}].until_s", "must be later than at_s")


def _memory_of(scenario: Scenario, entry: FleetEntry, path: Path, index: int) -> FleetEntry:
    """The entry with `memory_of` turned into an exact `memory_mb` override."""
    if entry.memory_of is None:
        return entry
    from fleetsim.device.cost import parse_plan, predict_peak_bytes
    from fleetsim.types import MIB, OptimizerSpec
    from fleetsim.zoo.model import ZOO

    key = f"fleet[{index}].memory_of"
    if "memory_mb" in entry.overrides:
        raise ConfigError(path, key, "set either memory_of or overrides.memory_mb, not both")
    if scenario.model.name not in ZOO:
        return entry  # check_names reports the unknown model
    config, t = ZOO[scenario.model.name].config, scenario.training
    optimizer = OptimizerSpec(t.optimizer.name, t.optimizer.momentum, t.optimizer.weight_decay)
    try:
        plan = parse_plan(entry.memory_of, config, t.batch_size, optimizer,
                          slice_residual=scenario.model.slice_residual)
    except ValueError as err:
        raise ConfigError(path, key, str(err)) from None
    peak = predict_peak_bytes(config, plan, scenario.data.seq_len)
    # bytes / MIB is exact in binary floating point, so the budget is the peak exactly
    return entry.model_copy(update={"memory_of": None,
                                    "overrides": {**entry.overrides, "memory_mb": peak / MIB}})


def check_names(scenario: Scenario, path: Path) -> None:
    """What the schema alone cannot see: names that must exist, values that must agree."""
    from fleetsim.zoo.model import ZOO

    if scenario.model.name not in ZOO:
        raise ConfigError(path, "model.name", f"unknown zoo model {scenario.model.name!r}"
                          f"{suggest(scenario.model.name, list(ZOO))}; known: {', '.join(ZOO)}")
    longest = min(entry.config.max_seq_len for entry in ZOO.values()) - 1
    if scenario.data.seq_len > longest:
        raise ConfigError(path, "data.seq_len", f"the zoo's models take at most {longest}")
    check_policy(scenario, path)
    workers = scenario.workers
    if workers.device == "cuda" and workers.backend == "ray" and workers.gpus_per_host <= 0:
        raise ConfigError(path, "workers.gpus_per_host", "must be > 0 with device cuda")
    try:
        scenario.output.dir.format(name=scenario.name)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(path, "output.dir", "only the placeholder {name} is known") from None


def check_policy(scenario: Scenario, path: Path) -> None:
    """The policy exists (a user file imports and its class has every method) and its
    parameters fit its `Params`: checked before anything starts."""
    from policies import policy_class, policy_params, registered

    policy, known = scenario.policy.name, registered()
    if ":" not in policy and policy not in known:
        raise ConfigError(path, "policy.name", f"unknown policy {policy!r}"
                          f"{suggest(policy, list(known))}; registered: {', '.join(known)}")
    try:
        cls = policy_class(policy)
    except LookupError as err:
        raise ConfigError(path, "policy.name", str(err)) from None
    params = getattr(cls, "Params", None)
    if params is not None:  # parsed here for the key path and a suggestion
        parse_model(params, dict(scenario.policy.params), path, "policy.params")
        return
    try:
        policy_params(cls, scenario.policy.params)
    except TypeError as err:
        raise ConfigError(path, "policy.params", str(err)) from None


def device_profiles(scenario: Scenario) -> list[DeviceProfile]:
    """One profile per device, in device-id order (fleet entries in file order)."""
    profiles = []
    for entry in scenario.fleet:
        base = scenario.device_classes[entry.device_class]
        profile = DeviceProfile.model_validate(_with_overrides(base, entry))
        profiles += [profile] * entry.count
    return profiles


def _with_overrides(profile: DeviceProfile, entry: FleetEntry) -> dict[str, Any]:
    """A fleet entry's profile, unvalidated: its class with the entry's overrides."""
    return {**profile.model_dump(), **entry.overrides}


def load_device_class(name: str, scenario_path: Path, index: int) -> DeviceProfile:
    path = DEVICES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in DEVICES_DIR.glob("*.yaml"))
        hint = suggest(name, known)
        raise ConfigError(scenario_path, f"fleet[{index}].class",
                          f"unknown device class {name!r}{hint}; known: {', '.join(known)}")
    profile = parse_model(DeviceProfile, read_yaml(path), path)
    if profile.name != name:
        raise ConfigError(path, "name", f"{profile.name!r} does not match the file name {name!r}")
    return profile


def scenario_to_yaml(scenario: Scenario) -> str:
    return yaml.safe_dump(scenario.model_dump(mode="json", by_alias=True), sort_keys=False)
