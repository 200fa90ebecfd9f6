from pathlib import Path

import pytest

from training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


SHIPPED = sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))


def test_every_shipped_config_is_checked() -> None:
    assert {"digits", "digits_cnn", "digits_resnet", "diabetes", "tiny", "example_folder",
            "example_members"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "configs" / f"{name}.toml")
    assert config.ensemble.members >= 3
    assert len(config.ensemble.models) in (0, config.ensemble.members)


def test_overrides_apply_with_types() -> None:
    config = load_config(ROOT / "configs" / "digits.toml",
                         ["distill.temperature=2.5", "model.hidden=[8, 8]", "name=other"])
    assert config.distill.temperature == 2.5
    assert config.model.hidden == (8, 8)
    assert config.name == "other"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[distill]\ntemprature = 2.0\n")
    with pytest.raises(ConfigError, match=r"unknown config key distill\.'temprature'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config key 'epochs'"):
        load_config(None, ["epochs=3"])


@pytest.mark.parametrize("override, message", [
    ("ensemble.members=0", r"ensemble.members must be > 0"),
    ("ensemble.members=2.5", r"ensemble.members must be an integer"),
    ("calibration.alpha=1.5", r"calibration.alpha must be in \(0, 1\)"),
    ("model.hidden=3", r"model.hidden must be a list"),
    ("device=tpu", r"device must be auto, cpu or cuda"),
    ("data.test_fraction=0.9", r"sum below 1"),
])
def test_bad_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
