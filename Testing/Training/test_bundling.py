"""Training.bundling: the model card ``metareg-train bundle`` writes, and the bundled model's committed card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from MetaRegistrationLib.checkpoint import read_card
from MetaRegistrationLib.data import Dataset
from MetaRegistrationLib.models import BUNDLED_MODEL, load_model
from MetaRegistrationLib.network import INPUT_CHANNELS
from Training.bundling import LICENSE, REFERENCES, bundle, training_domain
from training_runs import keep_torch_threads, run_training, same_weights, tiny_config, weights  # noqa: F401

DESCRIPTION = ("name", "version", "license", "intended_use", "data_source", "data_terms", "inputs", "outputs",
               "references")
DOMAIN = ("fixed_voxel_spacing_mm", "fixed_field_of_view_mm", "moving_voxel_spacing_mm", "moving_field_of_view_mm")


def strings(value) -> list[str]:
    """Every string in a JSON value."""
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return [value] if isinstance(value, str) else []


def assert_a_portable_card(card: dict) -> None:
    assert all(key in card for key in DESCRIPTION), sorted(set(DESCRIPTION) - set(card))
    assert card["license"] == LICENSE == "Apache-2.0"
    assert "not for clinical decisions" in card["intended_use"]
    assert card["inputs"]["network_input"]["channels"] == list(INPUT_CHANNELS)
    assert set(DOMAIN) <= set(card["inputs"]["training_domain"])
    assert "phi(x) = A (x + u(x))" in card["outputs"]["displacement"]["transform"]
    assert card["outputs"]["displacement"]["units"] == "mm"
    assert card["references"] == REFERENCES and all(ref["title"] and ref["year"] for ref in REFERENCES)
    provenance = card["provenance"]
    assert not provenance["git_commit"].endswith("-dirty") and isinstance(provenance["git_uncommitted_changes"], bool)
    absolute = [text for text in strings(card) if text.startswith("/") or "/work/" in text or "/tmp/" in text]
    assert absolute == []


def test_bundle_writes_a_model_card(synthetic_dataset, tmp_path):
    values = tiny_config(synthetic_dataset, episodes=2, validate_every=0)
    run = run_training(tmp_path, values, "run")
    out = tmp_path / "models" / "tiny-init"
    metrics = bundle(run, "latest", out, "0.3.1", frames=4)
    network, _, card = load_model(out)
    assert same_weights(network.state_dict(), weights(run / "final"))
    assert (card["name"], card["version"]) == ("tiny-init", "0.3.1")
    assert_a_portable_card(card)
    assert card["provenance"]["val_metrics"] == metrics and metrics["frames"] == 4 and metrics["cases"] == 1
    assert card["provenance"]["data"] == "data" and card["data_source"] == {"name": "data"}
    assert card["provenance"]["training_config"]["data"] == "data"
    assert card["provenance"]["source_checkpoint"] == "run/latest"
    domain = card["inputs"]["training_domain"]
    assert (domain["split"], domain["cases"]) == ("train", 1)
    # The synthetic case: 16 x 18 x 14 voxels (i, j, k) of 1.5 mm, the same on both sides.
    for side in ("fixed", "moving"):
        assert domain[f"{side}_voxel_spacing_mm"] == {"min": [1.5] * 3, "max": [1.5] * 3}
        assert domain[f"{side}_field_of_view_mm"] == {"min": [24.0, 27.0, 21.0], "max": [24.0, 27.0, 21.0]}
    assert card["inputs"]["network_input"]["network_voxel_spacing_mm"] == {"min": [3.0] * 3, "max": [3.0] * 3}


def test_the_bundled_models_card_describes_it():
    card = read_card(BUNDLED_MODEL)
    assert_a_portable_card(card)
    weights_file = Path(f"{BUNDLED_MODEL}.safetensors")
    assert card["weights"]["sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest() == \
        "4467bc13403f5a4118ac5ed4d0ef3311a2e7f16871ea09d41120ffc2b677e658"
    assert card["name"] == "meta-init" and card["data_source"]["name"] == "mrus-prostate"
    assert "DeepReg" in card["data_source"]["origin"] and "SmartTarget" in card["data_source"]["description"]
    assert "research and testing" in card["data_terms"]
    domain = card["inputs"]["training_domain"]
    assert domain["cases"] == card["provenance"]["train_cases"] == 76
    assert domain["fixed_voxel_spacing_mm"] == domain["moving_voxel_spacing_mm"] == {"min": [1.5] * 3,
                                                                                     "max": [1.5] * 3}
    assert domain["fixed_field_of_view_mm"]["max"] == [70.5, 94.5, 66.0]
    assert domain["moving_field_of_view_mm"]["max"] == [103.5, 103.5, 96.0]
    assert card["provenance"]["git_commit"] == "ca16279715e5587b368fa366273f0a86636b7660"
    assert card["provenance"]["source_checkpoint"] == "Training/runs/meta-v1/latest"
    load_model()  # the weights still load, checked against the card


@pytest.mark.real_data
def test_the_bundled_models_training_domain_is_the_data_sets(real_data_dir):
    card = json.loads(Path(f"{BUNDLED_MODEL}.json").read_text())
    assert training_domain(Dataset(real_data_dir), "train") == card["inputs"]["training_domain"]


def test_bundle_refuses_an_empty_val_split_and_an_unreadable_header_in_one_line(synthetic_dataset, tmp_path,
                                                                                 capsys):
    from Training.train import main

    run = run_training(tmp_path, tiny_config(synthetic_dataset, episodes=2, validate_every=0), "run")
    out = tmp_path / "models" / "tiny-init"
    capsys.readouterr()  # the training run's progress bars
    (synthetic_dataset / "split.json").write_text('{"train": ["a"], "val": []}')
    assert main(["bundle", "--run", str(run), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("metareg-train: error: ") and "val" in error
    (synthetic_dataset / "split.json").write_text('{"train": ["a"], "val": ["b"]}')
    (synthetic_dataset / "fixed_images" / "a.nii.gz").write_bytes(b"not an image at all")
    assert main(["bundle", "--run", str(run), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "a.nii.gz" in error
    assert not out.with_suffix(".json").exists()
