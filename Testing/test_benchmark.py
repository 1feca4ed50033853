"""Tests of Training.benchmark: its JSON output and its parts, kept quick."""

from __future__ import annotations

import argparse
import functools
import json

import pytest
import torch

from MetaRegistrationLib.errors import InputError, MetaRegistrationError
from MetaRegistrationLib.phantom import make_phantom_case
from Training import benchmark


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def small_phantom(monkeypatch):
    """The phantom at half resolution, so that a benchmark without --data stays quick."""
    monkeypatch.setattr(benchmark, "make_phantom_case", functools.partial(make_phantom_case, scale=0.5))
    return make_phantom_case(seed=0, scale=0.5)[0]


def test_json_output_has_the_medians(small_phantom, capsys):
    assert benchmark.run(parse("--repeats", "1", "--reference-repeats", "0", "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["case"] == "phantom-0"
    assert result["device"] == "cpu"
    assert result["fixed_shape_kji"] == list(small_phantom.fixed_image.grid.array_shape)
    assert result["threads"] == torch.get_num_threads()
    for key in ("update_median_s", "predict_median_s"):
        assert 0 < result[key] < 60
    assert result["reference_step_median_s"] is None  # skipped by --reference-repeats 0


def test_table_output_names_each_step(small_phantom, capsys):
    benchmark.run(parse("--repeats", "1", "--reference-repeats", "0"))
    out = capsys.readouterr().out
    assert "update" in out and "predict" in out and "reference_step" not in out


def test_reference_step_runs_on_a_small_pair():
    pair = benchmark.case_pair(make_phantom_case(seed=0, scale=0.3)[0])
    seconds = benchmark.time_reference_step(pair, repeats=1, device=torch.device("cpu"), warmup=0,
                                            num_channel_initial=2)
    assert seconds > 0


def test_acquired_mask_holds_planes_of_constant_j():
    mask = benchmark.acquired_mask((44, 63, 47))
    assert mask.shape == (1, 1, 44, 63, 47)
    planes = mask[0, 0].amax(dim=(0, 2))
    assert planes.sum() == benchmark.ACQUIRED_PLANES
    assert planes[0] == 1 and planes[-1] == 1
    assert torch.equal(mask[0, 0, 0], mask[0, 0, 43])  # the same frames at every depth


def test_data_errors_reach_the_cli_as_metaregistration_errors(tmp_path):
    with pytest.raises(MetaRegistrationError, match="data folder not found"):
        benchmark.run(parse("--data", str(tmp_path / "missing"), "--repeats", "1"))


@pytest.mark.parametrize("argv", [("--repeats", "0"), ("--case", "a"), ("--reference-repeats", "-1")])
def test_bad_arguments_are_input_errors(argv):
    with pytest.raises(InputError):
        benchmark.run(parse(*argv))


def test_real_case_is_read_through_the_data_reader(synthetic_dataset, capsys):
    benchmark.run(parse("--data", str(synthetic_dataset), "--case", "b", "--repeats", "1",
                        "--reference-repeats", "0", "--json"))
    result = json.loads(capsys.readouterr().out)
    assert result["case"] == "b"
    assert result["fixed_shape_kji"] == [14, 18, 16]
