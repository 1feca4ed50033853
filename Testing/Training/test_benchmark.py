"""Tests of Training.benchmark: its JSON and table output, the model it times and its errors, kept quick."""

from __future__ import annotations

import argparse
import functools
import json

import pytest
import torch

from MetaRegistrationLib.settings import AdaptationSettings
from MetaRegistrationLib.errors import InputError, MetaRegistrationError
from MetaRegistrationLib.models import save_model
from MetaRegistrationLib import phantom
from MetaRegistrationLib.network import RegistrationNet
from MetaRegistrationLib.phantom import make_phantom_case, open_case
from MetaRegistrationLib.precision import bf16_supported
from Training import benchmark
from Training.cli import main

KEYS = ("update_median_s", "predict_median_s", "interaction_median_s", "preparation_median_s", "step_median_s",
        "reference_step_median_s", "threads", "device", "model", "sweeps", "case")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def small_phantom(monkeypatch):
    """The phantom at half resolution, so that a benchmark without --data stays quick."""
    monkeypatch.setattr(phantom, "make_phantom_case", functools.partial(make_phantom_case, scale=0.5))
    return make_phantom_case(seed=0, scale=0.5)[0]


@pytest.fixture
def tiny_phantom(monkeypatch):
    """The phantom at 0.3 resolution with sweeps of 4 frames (its gland spans 8 planes): the quickest run."""
    monkeypatch.setattr(phantom, "make_phantom_case", functools.partial(make_phantom_case, scale=0.3))
    monkeypatch.setattr(benchmark, "SWEEP_FRAMES", 4)


@pytest.fixture
def tiny_model(tmp_path):
    """A saved fresh network with two gradient steps per interaction."""
    path = tmp_path / "tiny"
    torch.manual_seed(1)
    save_model(path, RegistrationNet(), AdaptationSettings(updates_per_interaction=2))
    return path


def test_json_output_has_positive_medians(small_phantom, tiny_model, capsys):
    assert benchmark.run(parse("--model", str(tiny_model), "--sweeps", "1", "--reference-repeats", "0",
                               "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(KEYS) <= set(result)
    assert result["case"] == "phantom-0"
    assert result["device"] == "cpu"
    assert result["model"] == str(tiny_model)
    assert result["sweeps"] == 1
    assert result["interactions"] == benchmark.SWEEP_FRAMES - 1  # one per frame from the second on
    assert result["fixed_shape_kji"] == list(small_phantom.fixed_image.grid.array_shape)
    assert result["threads"] == torch.get_num_threads()
    for key in KEYS[:5]:
        assert 0 < result[key] < 60
    assert result["update_median_s"] >= result["preparation_median_s"]
    assert result["reference_step_median_s"] is None  # skipped by --reference-repeats 0


def test_given_model_is_timed_with_its_settings(tiny_phantom, tiny_model, capsys):
    benchmark.run(parse("--model", str(tiny_model), "--sweeps", "1", "--reference-repeats", "0", "--json"))
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == str(tiny_model)
    assert result["updates_per_interaction"] == 2


def test_bad_model_path_is_a_one_line_cli_error(tmp_path, capsys):
    assert main(["benchmark", "--model", str(tmp_path / "missing"), "--sweeps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metareg benchmark: error:") and "missing" in err
    assert err.count("\n") == 1


def test_table_output_names_each_row_and_the_model(tiny_phantom, tiny_model, capsys):
    benchmark.run(parse("--model", str(tiny_model), "--sweeps", "1", "--reference-repeats", "0"))
    out = capsys.readouterr().out
    assert f"model {tiny_model}" in out
    for row in ("update", "predict", "interaction"):
        assert f"\n{row} " in out
    assert "reference_step" not in out


def test_reference_step_runs_on_a_small_case():
    case = make_phantom_case(seed=0, scale=0.3)[0]
    seconds = benchmark.time_reference_step(case, repeats=1, device=torch.device("cpu"), warmup=0,
                                            num_channel_initial=2)
    assert seconds > 0


def test_data_errors_reach_the_cli_as_metaregistration_errors(tmp_path, tiny_model):
    with pytest.raises(MetaRegistrationError, match="data folder not found"):
        benchmark.run(parse("--model", str(tiny_model), "--data", str(tmp_path / "missing")))


@pytest.mark.parametrize("argv", [("--sweeps", "0"), ("--case", "a"), ("--reference-repeats", "-1")])
def test_bad_arguments_are_input_errors(argv):
    with pytest.raises(InputError):
        benchmark.run(parse(*argv))


def test_real_case_is_read_through_the_data_reader(synthetic_dataset, tiny_model, monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "SWEEP_FRAMES", 4)  # the tiny gland spans 9 planes only
    benchmark.run(parse("--model", str(tiny_model), "--data", str(synthetic_dataset), "--case", "b", "--sweeps", "1",
                        "--reference-repeats", "0", "--json"))
    result = json.loads(capsys.readouterr().out)
    assert result["case"] == "b"
    assert result["fixed_shape_kji"] == [14, 18, 16]
    assert result["interactions"] == 3


def test_a_case_the_folder_lacks_is_named(synthetic_dataset):
    with pytest.raises(InputError, match="has no complete case zzz"):
        open_case(synthetic_dataset, "zzz")
    assert open_case(synthetic_dataset, None).case_id == "a"


def test_training_benchmark_times_fp32_and_the_chosen_precision_on_the_same_episodes(tiny_phantom, tmp_path,
                                                                                       monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("inner_steps: 2\nf_max: 4\nnetwork:\n  num_channel_initial: 4\n")
    timed = []
    real = benchmark.time_training
    monkeypatch.setattr(benchmark, "time_training",
                        lambda case, cfg, episodes, precision, device, batch=1:
                        timed.append((precision, batch)) or real(case, cfg, episodes, precision, device, batch))
    assert benchmark.run(parse("--training", "--config", str(config), "--episodes", "2", "--precision", "bf16"
                               if bf16_supported(torch.device("cpu")) else "fp32", "--meta-batch", "2",
                               "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    assert timed[0] == ("fp32", 1) and timed[-1] == (result["precision"], 2)
    assert result["meta_batch"] == 2 and 0 < result["batched_episode_s"] < 60
    assert result["inner_steps"] == 2 and result["episodes"] == 2
    for key in ("fp32_episode_s", "episode_s", "fp32_step_s", "step_s"):
        assert 0 < result[key] < 60
    assert result["episode_s"] >= 2 * result["step_s"] * 0.9  # an episode holds its two inner steps
    assert result["speedup"] == pytest.approx(result["fp32_episode_s"] / result["episode_s"])


def test_training_benchmark_refuses_a_bad_episode_count():
    with pytest.raises(InputError, match="--episodes must be at least 1"):
        benchmark.run(parse("--training", "--episodes", "0"))
