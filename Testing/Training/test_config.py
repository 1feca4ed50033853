"""Training.config: typed, range-checked training configs; a bad value is one line naming the file and the key,
and no run folder is created."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.network import NetworkConfig
from Training.config import AugmentationConfig, TrainConfig, differences, load_config
from Training.train import main


def refused(tmp_path, capsys, text: str) -> str:
    """The one-line error ``metareg-train meta`` gives for a config file holding ``text`` (after checking that
    it names the file and that no run folder was made); returns the message after the file name."""
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    run = tmp_path / "run"
    assert main(["meta", "--config", str(config), "--run", str(run)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    prefix = f"metareg-train: error: {config}: "
    assert error.startswith(prefix), error
    assert not run.exists()
    with pytest.raises(InputError) as raised:
        load_config(config)
    assert f"metareg-train: error: {raised.value}\n" == error
    return error[len(prefix):].strip()


@pytest.mark.parametrize("text, key, problem", [
    ("episodes: six\n", "episodes", "input should be a valid integer (got 'six')"),
    ("episodes: 6.5\n", "episodes", "input should be a valid integer (got 6.5)"),
    ("episodes: 6.0\n", "episodes", "input should be a valid integer (got 6.0)"),
    ("episodes: true\n", "episodes", "input should be a valid integer (got True)"),
    ("f_min: '2'\n", "f_min", "input should be a valid integer (got '2')"),
    ("inner_learning_rate: fast\n", "inner_learning_rate", "input should be a valid number (got 'fast')"),
    ("inner_learning_rate: '1e-3'\n", "inner_learning_rate", "input should be a valid number (got '1e-3')"),
    ("seed: abc\n", "seed", "input should be a valid integer (got 'abc')"),
    ("full_volume_input: 'yes'\n", "full_volume_input", "input should be a valid boolean (got 'yes')"),
    ("data: 5\n", "data", "input should be a valid string (got 5)"),
    ("network: {extract_levels: [0, '1']}\n", "network.extract_levels.1", "input should be a valid integer"),
    ("adaptation: {updates_per_interaction: 1.5}\n", "adaptation.updates_per_interaction",
     "input should be a valid integer"),
    ("augmentation: {scale: small}\n", "augmentation.scale", "input should be a valid number"),
    ("network: [8]\n", "network", "must be a mapping of settings, got list"),
], ids=lambda value: value if isinstance(value, str) and "\n" not in value else None)
def test_a_wrong_type_is_one_line_naming_file_and_key(tmp_path, capsys, text, key, problem):
    message = refused(tmp_path, capsys, text)
    assert message.startswith(f"{key}: {problem}"), message


@pytest.mark.parametrize("text, key, problem", [
    ("inner_learning_rate: -0.001\n", "inner_learning_rate", "input should be greater than 0"),
    ("inner_learning_rate: 0\n", "inner_learning_rate", "input should be greater than 0"),
    ("inner_learning_rate: .nan\n", "inner_learning_rate", "input should be a finite number"),
    ("validate_every: -1\n", "validate_every", "input should be greater than or equal to 0"),
    ("checkpoint_every: 0\n", "checkpoint_every", "input should be greater than or equal to 1"),
    ("inner_steps: 0\n", "inner_steps", "input should be greater than or equal to 1"),
    ("seed: -1\n", "seed", "input should be greater than or equal to 0"),
    ("f_min: 0\n", "f_min", "input should be greater than or equal to 1"),
    ("f_min: 5\nf_max: 3\n", "f_max", "must be at least f_min (5) (got 3)"),
    ("checkpoint_every: 25\nvalidate_every: 30\n", "validate_every",
     "must be 0 or a multiple of checkpoint_every (25) (got 30)"),
    ("beta_meta_start: 1.5\n", "beta_meta_start", "input should be less than or equal to 1"),
    ("beta_meta_end: -0.1\n", "beta_meta_end", "input should be greater than or equal to 0"),
    ("train_split: ''\n", "train_split", "string should have at least 1 character"),
    ("adaptation: {learning_rate: 0.0}\n", "adaptation.learning_rate", "input should be greater than 0"),
    ("augmentation: {scale: 1.0}\n", "augmentation.scale", "input should be less than 1"),
    ("augmentation: {rotation_deg: -5}\n", "augmentation.rotation_deg", "input should be greater than or equal"),
    ("network: {first_kernel_size: 4}\n", "network.first_kernel_size", "must be odd (got 4)"),
    ("network: {extract_levels: [0, 0]}\n", "network.extract_levels", "must not repeat a level"),
    ("network: {extract_levels: []}\n", "network.extract_levels", "tuple should have at least 1 item"),
    ("augmentation: {flip: true}\n", "augmentation.flip", "unknown setting"),
    ("precision: fp16\n", "precision", "input should be 'auto', 'fp32' or 'bf16' (got 'fp16')"),
], ids=lambda value: value if isinstance(value, str) and "\n" not in value else None)
def test_a_value_out_of_range_is_one_line_naming_file_and_key(tmp_path, capsys, text, key, problem):
    message = refused(tmp_path, capsys, text)
    assert message.startswith(f"{key}: {problem}"), message


def test_every_problem_of_a_file_is_named_on_the_one_line(tmp_path, capsys):
    message = refused(tmp_path, capsys, "episodes: six\nseed: -1\nlearning_rate: 0.1\n")
    assert re.fullmatch(r"seed: .*; episodes: .*; learning_rate: unknown setting", message), message


def test_setting_names_must_be_text(tmp_path, capsys):
    assert refused(tmp_path, capsys, "1: 2\n") == "setting names must be text, got 1"
    assert refused(tmp_path, capsys, "augmentation: {2: 3}\n") == "augmentation: setting names must be text, got 2"


@pytest.mark.parametrize("text, expected", [
    ("1e-3", 0.001), ("5E-4", 0.0005), ("+2e2", 200.0), ("1.5e-3", 0.0015), ("1.0e-3", 0.001), ("0.001", 0.001),
])
def test_yaml_1_2_floats_are_numbers(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(f"inner_learning_rate: {text}\nadaptation:\n  learning_rate: {text}\n")
    config = load_config(path)
    assert config.inner_learning_rate == expected and config.adaptation.learning_rate == expected
    assert isinstance(config.inner_learning_rate, float)


def test_integers_stay_integers_and_fill_float_settings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("episodes: 10\nadaptation: {bending_weight: 100}\n")
    config = load_config(path)
    assert config.episodes == 10 and isinstance(config.episodes, int)
    assert config.adaptation.bending_weight == 100.0


def test_a_config_survives_its_round_trip_through_yaml(tmp_path):
    config = TrainConfig(episodes=7, inner_learning_rate=1e-5, network=NetworkConfig(extract_levels=(0, 2)),
                         augmentation=AugmentationConfig(scale=0.1))
    path = tmp_path / "saved.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert load_config(path) == config == TrainConfig.from_dict(config.to_dict(), "test")


def test_configs_are_frozen_and_typed_in_code_too():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().episodes = 3
    with pytest.raises(ValueError, match="episodes"):
        TrainConfig(episodes="3")


def test_differences_name_the_settings_that_differ():
    base = TrainConfig()
    changed = TrainConfig(episodes=5, network=NetworkConfig(num_channel_initial=4))
    assert differences(changed, base) == ["episodes: 5 vs 2000", "network.num_channel_initial: 4 vs 8"]
    assert differences(base, TrainConfig()) == []
