"""Helpers of the ``metareg-train`` tests: tiny configs on the synthetic data set, runs through the command line,
and reading what they wrote."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from MetaRegistrationLib.models import load_model
from Training.train import main


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """train() applies the config's ``threads`` to the whole process; give the other tests theirs back (import
    this fixture into a test module to use it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_config(data: Path, **overrides) -> dict:
    """A meta run of a few seconds on the synthetic data set."""
    values = {
        "mode": "meta", "data": str(data), "seed": 0, "episodes": 3, "inner_steps": 2,
        "checkpoint_every": 1, "validate_every": 3, "validate_cases": 1,
        # Validation sweeps f_max frames; the synthetic gland spans only 9 sagittal planes.
        "f_min": 2, "f_max": 4,
        # One thread: these tensors are tiny, and two OpenMP threads on a loaded machine spin-wait
        # for each other (one episode took 11 s instead of 0.3 s).
        "threads": 1,
    }
    return {**values, **overrides}


def write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def weights(stem: Path) -> dict[str, torch.Tensor]:
    return load_model(stem)[0].state_dict()


def same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_training(tmp_path: Path, values: dict, name: str) -> Path:
    """Train through the command line into ``tmp_path/name``; returns the run folder."""
    config = write_config(tmp_path / f"{name}.yaml", values)
    run = tmp_path / name
    assert main([values["mode"], "--config", str(config), "--run", str(run)]) == 0
    return run


@pytest.fixture
def conventional(synthetic_dataset) -> dict:
    """A conventional run of 3 episodes, a checkpoint after each, no validation."""
    return tiny_config(synthetic_dataset, mode="conventional", episodes=3, validate_every=0)


@pytest.fixture
def uninterrupted(conventional, tmp_path) -> dict:
    """The final weights of the ``conventional`` run, uninterrupted."""
    return weights(run_training(tmp_path, conventional, "whole") / "final")
