"""Scenario files: strict validation, one-line errors, resolution and round trips.

The rule: every bad input gets ONE line on stderr naming the file and the key path (with
a suggestion for a misspelt key), exit code 2 and no traceback. Each malformed file in
tests/scenarios_bad/ is one row of BAD.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleetsim import PROJECT_ROOT
from fleetsim.cli import main
from fleetsim.config.scenario import (
    DEVICES_DIR,
    DeviceProfile,
    device_profiles,
    load_scenario,
    scenario_to_yaml,
)
from fleetsim.errors import ConfigError

BAD_DIR = Path(__file__).parent / "scenarios_bad"
GOOD = [PROJECT_ROOT / "scenarios" / "smoke.yaml", PROJECT_ROOT / "scenarios" / "default.yaml"]


# (file in tests/scenarios_bad, exact key path ("" = whole file), message substring)
BAD = [
    ("unknown_top_key.yaml", "roudns", "did you mean 'rounds'"),
    ("unknown_top_key_optional.yaml", "selction", "did you mean 'selection'"),
    ("unknown_nested_key.yaml", "selection.deadlin_s", "did you mean 'deadline_s'"),
    ("list_entry_missing_required.yaml", "fleet[1].cout", "did you mean 'count'"),
    ("list_entry_unknown_key.yaml", "fleet[0].overides", "did you mean 'overrides'"),
    ("rounds_wrong_type.yaml", "rounds", "valid integer"),
    ("rounds_zero.yaml", "rounds", "greater than or equal to 1"),
    ("over_selection_negative.yaml", "selection.over_selection", "greater than or equal to 0"),
    ("partition_bad_enum.yaml", "data.partition", "'natural', 'iid' or 'dirichlet'"),
    ("unknown_device_class.yaml", "fleet[0].class", "did you mean 'rpi4'"),
    ("override_unknown_key.yaml", "fleet[0].overrides.memroy_mb", "did you mean 'memory_mb'"),
    ("override_out_of_range.yaml", "fleet[0].overrides.memory_mb", "greater than 0"),
    ("missing_fleet.yaml", "fleet", "required key is missing"),
    ("invalid_yaml.yaml", "", "invalid YAML at line 4"),
    ("top_level_list.yaml", "", "top level must be a mapping"),
    ("steps_and_epochs.yaml", "training", "exactly one of local_steps and local_epochs"),
    ("min_updates_too_big.yaml", "selection.min_updates", "must not exceed devices_per_round"),
    ("devices_per_round_too_big.yaml", "selection.devices_per_round", "exceeds the fleet size (4)"),
    ("workers_count_bad.yaml", "workers.count", "valid integer"),
    ("control_character.yaml", "", "invalid YAML"),
    ("not_utf8.yaml", "", "UTF-8"),
    ("negative_seed.yaml", "seed", "greater than or equal to 0"),
    ("seq_len_too_long.yaml", "data.seq_len", "take at most 127"),
    ("unknown_model.yaml", "model.name", "did you mean 'gpt-4x128'"),
    ("model_init_bad.yaml", "model.init", "'pretrained' or 'scratch'"),
    ("unknown_policy.yaml", "policy.name", "did you mean 'caff'"),
    ("zero_workers.yaml", "workers.count", "greater than or equal to 1"),
    ("output_placeholder.yaml", "output.dir", "only the placeholder {name}"),
    ("memory_of_bad_plan.yaml", "fleet[0].memory_of", "width:S (0 < S <= 1)"),
    ("memory_of_and_memory_mb.yaml", "fleet[0].memory_of", "not both"),
    ("event_unknown_class.yaml", "events[0].class", "did you mean 'rpi4'"),
    ("trace_missing.yaml", "fleet[0].availability.trace", "cannot read trace"),
    ("markov_mean_zero.yaml", "fleet[0].availability.mean_online_s", "greater than 0"),
    ("fault_bad_kind.yaml", "faults[0].kind", "'host_crash', 'corrupt_upload' or 'slow_host'"),
]


def prefix(path: Path, key: str) -> str:
    return f"{path}: {key}: " if key else f"{path}: "


def test_every_bad_file_has_a_row() -> None:
    names = [row[0] for row in BAD]
    assert sorted(names) == sorted(p.name for p in BAD_DIR.iterdir())


@pytest.mark.parametrize(("name", "key", "message"), BAD)
def test_load_scenario_raises_one_line(name: str, key: str, message: str) -> None:
    path = BAD_DIR / name
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(prefix(path, key))
    assert message in text


@pytest.mark.parametrize(("name", "key", "message"), BAD)
def test_cli_validate_exits_2_with_one_line(
    name: str, key: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = BAD_DIR / name
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err.startswith("fleetsim: " + prefix(path, key))
    assert message in err


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_scenarios_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    raw = yaml.safe_load(path.read_text())  # the file as written; no policy: FedAvg
    devices = sum(entry["count"] for entry in raw["fleet"])
    policy = raw.get("policy", {"name": "fedavg"})["name"]
    assert out == (f"{path}: ok ({devices} devices, {raw['rounds']} rounds, policy {policy}, "
                   f"model {raw['model']['name']})\n")


def test_device_classes_are_resolved() -> None:
    scenario = load_scenario(GOOD[0])
    assert set(scenario.device_classes) == {"phone_low", "phone_mid", "rpi4"}
    for name, profile in scenario.device_classes.items():  # each as its file says
        raw = yaml.safe_load((DEVICES_DIR / f"{name}.yaml").read_text())
        assert profile.model_dump(include=set(raw)) == raw
    assert scenario.device_classes["rpi4"].memory_mb == 512  # devices/rpi4.yaml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


FLEET_WITH_OVERRIDE = """\
rounds: 2
fleet:
  - {class: rpi4, count: 2, overrides: {memory_mb: 256}}
  - {class: phone_low, count: 1}
selection: {devices_per_round: 3}
"""


def test_device_profiles_in_fleet_order_with_overrides(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, FLEET_WITH_OVERRIDE))
    profiles = device_profiles(scenario)
    assert [p.name for p in profiles] == ["rpi4", "rpi4", "phone_low"]
    assert [p.memory_mb for p in profiles] == [256, 256, 192]
    rpi4 = scenario.device_classes["rpi4"]
    assert profiles[0] == rpi4.model_copy(update={"memory_mb": 256})
    assert rpi4.memory_mb == 512


def test_device_profile_overrides_are_validated(tmp_path: Path) -> None:
    text = FLEET_WITH_OVERRIDE.replace("memory_mb: 256", "flops_per_s: 1e9")
    profile = device_profiles(load_scenario(write(tmp_path, text)))[0]
    assert profile.flops_per_s == 1e9 and isinstance(profile.flops_per_s, float)


def test_set_overrides() -> None:
    assert load_scenario(GOOD[0], {"selection.deadline_s": "5"}).selection.deadline_s == 5.0
    with pytest.raises(ConfigError) as info:
        load_scenario(GOOD[0], {"rounds": "x"})
    assert info.value.key == "rounds"
    assert str(info.value).startswith(prefix(GOOD[0], "rounds"))


def test_set_override_with_invalid_yaml_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(GOOD[0], {"rounds": "["})
    assert info.value.key == "rounds"


def test_memory_of_is_the_predicted_peak_of_the_plan(tmp_path: Path) -> None:
    from fleetsim.device.cost import parse_plan, predict_peak_bytes
    from fleetsim.world.fleet import Fleet
    from fleetsim.zoo.model import ZOO

    text = FLEET_WITH_OVERRIDE.replace("overrides: {memory_mb: 256}", 'memory_of: "width:0.25"')
    scenario = load_scenario(write(tmp_path, text))
    config = ZOO[scenario.model.name].config
    plan = parse_plan("width:0.25", config, scenario.training.batch_size)
    fleet = Fleet(device_profiles(scenario), [1, 1, 1])
    assert fleet.state(0, 0).memory_bytes == predict_peak_bytes(config, plan, 80)  # exactly
    assert fleet.state(2, 0).memory_bytes == 192 * 2**20
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(scenario_to_yaml(scenario))
    assert load_scenario(resolved) == scenario


def test_memory_of_a_width_slices_the_residual_with_the_model(tmp_path: Path) -> None:
    from fleetsim.device.cost import parse_plan, predict_peak_bytes
    from fleetsim.world.fleet import Fleet
    from fleetsim.zoo.model import ZOO

    text = FLEET_WITH_OVERRIDE.replace("overrides: {memory_mb: 256}", 'memory_of: "width:0.25"')
    budgets = []
    for residual in (False, True):
        flag = str(residual).lower()
        model = f"model: {{name: gpt-8x64, init: scratch, slice_residual: {flag}}}\n"
        scenario = load_scenario(write(tmp_path, text + model))
        assert scenario.model.init == "scratch" and scenario.model.slice_residual is residual
        fleet = Fleet(device_profiles(scenario), [1, 1, 1])
        budgets.append(fleet.state(0, 0).memory_bytes)
    config = ZOO["gpt-8x64"].config
    plan = parse_plan("width:0.25", config, 16, slice_residual=True)
    assert budgets[1] == predict_peak_bytes(config, plan, 80) < budgets[0]


def test_local_epochs_alone_is_accepted(tmp_path: Path) -> None:
    text = FLEET_WITH_OVERRIDE + "training: {local_epochs: 1}\n"
    assert load_scenario(write(tmp_path, text)).training.local_epochs == 1


@pytest.mark.parametrize("source", [*GOOD, None], ids=["smoke", "default", "overrides"])
def test_resolved_scenario_round_trips(source: Path | None, tmp_path: Path) -> None:
    scenario = load_scenario(source or write(tmp_path, FLEET_WITH_OVERRIDE))
    path = tmp_path / "resolved.yaml"
    path.write_text(scenario_to_yaml(scenario))
    assert load_scenario(path) == scenario


@pytest.mark.parametrize("path", sorted(DEVICES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_device_class_files_parse(path: Path) -> None:
    profile = DeviceProfile.model_validate(yaml.safe_load(path.read_text()))
    assert profile.name == path.stem
