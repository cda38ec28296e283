import tomllib

import pytest

from fedsqueeze.config import ConfigError, RunConfig, parse_value
from simulations.run import PRESET_DIR as REPO_PRESETS, resolve_overrides
from tests.conftest import REPO


def test_pyproject_table_matches_dataclass_defaults():
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_mapping(table) == RunConfig()
    assert sorted(table) == sorted(RunConfig.keys())  # every knob is documented in pyproject


@pytest.mark.parametrize("raw,match", [
    ({"lerning-rate": 0.1}, "unknown config key 'lerning-rate'"),
    ({"lr": "fast"}, "'lr' must be float"),
    ({"local-epochs": True}, "'local-epochs' must be int"),
    ({"fraction-train": 1.5}, "fraction-train"),
    ({"model": "resnet"}, "'model'"),
    ({"uplink": "prune=topk,keep=2"}, "'uplink'"),
    ({"uplink": "nonsense-preset"}, "'uplink'"),
    ({"out-dir": "relative/dir"}, "absolute"),
    ({"fail-hang": 0.1}, "round-timeout"),
    ({"eval-every": 0}, "'eval-every': must be >= 1"),
])
def test_bad_config_is_a_typed_error_naming_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_mapping(raw)


def test_int_is_accepted_for_float_and_round_trips():
    cfg = RunConfig.from_mapping({"lr": 1, "seed": 7})
    assert cfg.lr == 1.0 and RunConfig.from_mapping(cfg.to_mapping()) == cfg


@pytest.mark.parametrize("preset", sorted(p.stem for p in REPO_PRESETS.glob("*.toml")))
def test_every_bundled_preset_validates(preset):
    cfg = resolve_overrides(preset, {"num-server-rounds": 1})
    assert cfg["name"] == preset and cfg["num-server-rounds"] == 1


def test_unknown_preset_lists_the_bundled_ones():
    with pytest.raises(ConfigError, match="stc"):
        resolve_overrides("no-such-preset")


def test_parse_value_follows_toml():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value('"a b"') == "a b" and parse_value("stc") == "stc"


def test_lr_decay_shapes_training_rounds_only(tmp_path):
    from fedsqueeze.config import ConfigError, RunConfig
    from server.downlink import Broadcast
    from server.federation import _instruction, _setup
    from server.rounds import RoundMode

    import pytest

    run = _setup(RunConfig.from_mapping({"model": "seed-cnn", "lr": 0.1, "lr-decay": 0.5}), tmp_path)
    bc = Broadcast([], 0, 1)
    assert [_instruction(run, r, bc, "", RoundMode()).lr for r in (1, 2, 3)] == [0.1, 0.05, 0.025]
    assert _instruction(run, 3, bc, "", RoundMode(phase="finetune-0.5")).lr == 0.1
    assert _instruction(run, 3, bc, "", RoundMode(phase="qat", lr=0.01)).lr == 0.01
    with pytest.raises(ConfigError, match="lr-decay"):
        RunConfig.from_mapping({"lr-decay": 0.0})
