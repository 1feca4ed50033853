"""Checkpoints: a faithful round trip, and one-line errors for every way a pair can be wrong."""

from __future__ import annotations

import json
import re

import pytest
import torch

from MetaRegistrationLib import __version__, checkpoint
from MetaRegistrationLib.checkpoint import (checkpoint_files, load_checkpoint, read_card, resolve_checkpoint,
                                            save_checkpoint, write_pointer)
from MetaRegistrationLib.errors import CheckpointError


def build(config: dict) -> torch.nn.Module:
    """A tiny network with weights and buffers (batch-norm statistics), shaped by its config."""
    channels = config["channels"]
    layers = [torch.nn.Conv3d(2, channels, 3, padding=1), torch.nn.BatchNorm3d(channels), torch.nn.ReLU(),
              torch.nn.Conv3d(channels, 3, 1)]
    if config.get("extra_layer"):
        layers.append(torch.nn.Conv3d(3, 3, 1))
    return torch.nn.Sequential(*layers)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build({"channels": 4})
    model[1].running_mean.uniform_()  # buffers must survive too
    paths = save_checkpoint(tmp_path / "model", model, {"channels": 4}, {"split": "train", "epochs": 3})
    return model, paths


def assert_one_line_naming(error: pytest.ExceptionInfo, path) -> None:
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path)), message


def rewrite_card(card_path, key, value):
    """Change one top-level field of a saved card, as a careless edit or a newer writer would."""
    card = json.loads(card_path.read_text())
    card[key] = value
    card_path.write_text(json.dumps(card))


def test_round_trip_gives_equal_weights_and_the_card(saved, tmp_path):
    model, (weights_path, card_path) = saved
    assert (weights_path.name, card_path.name) == ("model.safetensors", "model.json")
    for path in (weights_path, card_path, tmp_path / "model"):
        loaded, card = load_checkpoint(path, build)
        original, restored = model.state_dict(), loaded.state_dict()
        assert original.keys() == restored.keys()
        assert all(torch.equal(original[name], restored[name]) for name in original)
    assert card["config"] == {"channels": 4}
    assert card["provenance"] == {"split": "train", "epochs": 3}
    assert card["library_version"] == __version__
    assert card["format_version"] == checkpoint.FORMAT_VERSION
    assert card["weights"]["file"] == "model.safetensors" and len(card["weights"]["sha256"]) == 64
    assert card["created"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


def test_checkpoint_files_accept_either_file_or_the_stem(tmp_path):
    expected = (tmp_path / "a.v2.safetensors", tmp_path / "a.v2.json")
    for given in ("a.v2", "a.v2.json", "a.v2.safetensors"):
        assert checkpoint_files(tmp_path / given) == expected


def test_tampered_weights_are_rejected(saved):
    _, (weights_path, _) = saved
    data = bytearray(weights_path.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights_path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch, the file was modified or is corrupt") as error:
        load_checkpoint(weights_path, build)
    assert_one_line_naming(error, weights_path)


def test_architecture_mismatch_is_rejected_with_what_differs(saved):
    _, (weights_path, card_path) = saved
    rewrite_card(card_path, "config", {"channels": 8})
    with pytest.raises(CheckpointError, match="does not match the architecture in model.json") as error:
        load_checkpoint(card_path, build)
    assert_one_line_naming(error, weights_path)
    assert "shape of 0.weight is (4, 2, 3, 3, 3) not (8, 2, 3, 3, 3)" in str(error.value)

    rewrite_card(card_path, "config", {"channels": 4, "extra_layer": True})
    with pytest.raises(CheckpointError, match="missing 4.weight, 4.bias"):
        load_checkpoint(card_path, build)


def test_unexpected_tensors_are_rejected(tmp_path):
    # Weights of a larger network saved with a config that builds a smaller one.
    save_checkpoint(tmp_path / "bigger", build({"channels": 4, "extra_layer": True}), {"channels": 4})
    with pytest.raises(CheckpointError, match="unexpected 4.bias, 4.weight"):
        load_checkpoint(tmp_path / "bigger", build)


def test_missing_or_broken_files_are_rejected(saved):
    _, (weights_path, card_path) = saved
    card_text = card_path.read_text()
    card_path.unlink()
    with pytest.raises(CheckpointError, match="file not found") as error:
        load_checkpoint(weights_path, build)
    assert_one_line_naming(error, card_path)

    card_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON") as error:
        load_checkpoint(weights_path, build)
    assert_one_line_naming(error, card_path)

    card_path.write_text(json.dumps({"config": {}}))
    with pytest.raises(CheckpointError, match="is not a checkpoint card"):
        load_checkpoint(weights_path, build)

    card_path.write_text(card_text)
    weights_path.unlink()
    with pytest.raises(CheckpointError, match="file not found") as error:
        load_checkpoint(card_path, build)
    assert_one_line_naming(error, weights_path)


def test_a_newer_format_is_rejected(saved):
    _, (_, card_path) = saved
    rewrite_card(card_path, "format_version", checkpoint.FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(card_path, build)


def test_a_config_the_builder_rejects_is_reported(saved):
    _, (_, card_path) = saved
    rewrite_card(card_path, "config", {"width": 4})
    with pytest.raises(CheckpointError, match="its config does not build a network") as error:
        load_checkpoint(card_path, build)
    assert_one_line_naming(error, card_path)


def test_a_config_that_is_not_json_is_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="cannot be written as JSON"):
        save_checkpoint(tmp_path / "model", build({"channels": 2}), {"channels": 2, "device": torch.device("cpu")})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_partial_file(saved, tmp_path, monkeypatch):
    model, (weights_path, card_path) = saved
    before = {path: path.read_bytes() for path in (weights_path, card_path)}

    def disk_full(_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", disk_full)
    other = build({"channels": 4})
    with pytest.raises(CheckpointError, match="model.safetensors: cannot be written") as error:
        save_checkpoint(weights_path, other, {"channels": 4})
    assert "\n" not in str(error.value)
    # The old pair is untouched and still loads; no temporary file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    assert {path: path.read_bytes() for path in before} == before
    monkeypatch.undo()
    loaded, _ = load_checkpoint(card_path, build)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_an_interrupted_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    real_replace = checkpoint.os.replace
    calls = []

    def fail_second(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", fail_second)
    with pytest.raises(CheckpointError, match="model.json: cannot be written"):
        save_checkpoint(tmp_path / "model", build({"channels": 2}), {"channels": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_a_description_adds_card_fields_but_not_the_formats_own(tmp_path):
    description = {"name": "tiny", "license": "Apache-2.0", "inputs": {"channels": ["a", "b"]}}
    _, card_path = save_checkpoint(tmp_path / "model", build({"channels": 2}), {"channels": 2}, None, description)
    card = json.loads(card_path.read_text())
    assert {key: card[key] for key in description} == description
    assert load_checkpoint(card_path, build)[1] == card
    with pytest.raises(CheckpointError, match="the description may not set weights, config") as error:
        save_checkpoint(tmp_path / "other", build({"channels": 2}), {"channels": 2}, None,
                        {"weights": {}, "config": {}})
    assert_one_line_naming(error, tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()


# --- pointers --------------------------------------------------------------------------------------------------

def test_a_pointer_names_a_pair_and_loading_follows_it(tmp_path):
    torch.manual_seed(0)
    first, second = build({"channels": 2}), build({"channels": 3})
    save_checkpoint(tmp_path / "v1", first, {"channels": 2}, {"episodes": 1})
    save_checkpoint(tmp_path / "v2", second, {"channels": 3}, {"episodes": 2})
    assert write_pointer(tmp_path / "latest", tmp_path / "v1.json") == tmp_path / "latest.json"
    assert json.loads((tmp_path / "latest.json").read_text()) == {
        "format": checkpoint.POINTER_FORMAT, "format_version": checkpoint.POINTER_FORMAT_VERSION, "checkpoint": "v1"}
    for given in ("latest", "latest.json", "latest.safetensors"):
        assert resolve_checkpoint(tmp_path / given) == tmp_path / "v1"
    assert read_card(tmp_path / "latest")["provenance"] == {"episodes": 1}
    loaded, _ = load_checkpoint(tmp_path / "latest", build)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), loaded.state_dict().values()))

    write_pointer(tmp_path / "latest", tmp_path / "v2")
    assert read_card(tmp_path / "latest")["provenance"] == {"episodes": 2}
    assert resolve_checkpoint(tmp_path / "v2") == tmp_path / "v2"  # a plain pair names itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "v1.json", "v1.safetensors", "v2.json",
                                                          "v2.safetensors"]


@pytest.mark.parametrize("pointer, message", [
    ({"checkpoint": "../elsewhere"}, "points at '../elsewhere', which is not the name of a checkpoint in its folder"),
    ({"checkpoint": ""}, "points at '', which is not the name of a checkpoint in its folder"),
    ({"checkpoint": 3}, "points at 3, which is not the name of a checkpoint in its folder"),
    ({"checkpoint": "gone"}, "points at checkpoint 'gone', whose card gone.json is not there"),
    ({"checkpoint": "model", "format_version": 99}, "is a checkpoint pointer of format version 99"),
], ids=["outside-its-folder", "empty", "not-a-name", "missing-target", "newer-format"])
def test_a_bad_pointer_is_refused_naming_it(saved, tmp_path, pointer, message):
    pointer_path = tmp_path / "latest.json"
    pointer_path.write_text(json.dumps({"format": checkpoint.POINTER_FORMAT, "format_version": 1, **pointer}))
    for load in (read_card, lambda path: load_checkpoint(path, build)):
        with pytest.raises(CheckpointError, match=re.escape(message)) as error:
            load(tmp_path / "latest")
        assert_one_line_naming(error, pointer_path)


def test_a_pointer_stays_in_its_folder(saved, tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(CheckpointError, match="can only point at a checkpoint in its own folder"):
        write_pointer(tmp_path / "sub" / "latest", tmp_path / "model")
    assert list((tmp_path / "sub").iterdir()) == []


def test_a_failed_pointer_write_leaves_the_old_pointer(saved, tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "newer", build({"channels": 4}), {"channels": 4})
    write_pointer(tmp_path / "latest", tmp_path / "model")
    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "replace", no_space)
    with pytest.raises(CheckpointError, match="latest.json: cannot be written") as error:
        write_pointer(tmp_path / "latest", tmp_path / "newer")
    assert_one_line_naming(error, tmp_path / "latest.json")
    monkeypatch.undo()
    assert resolve_checkpoint(tmp_path / "latest") == tmp_path / "model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "model.json", "model.safetensors",
                                                          "newer.json", "newer.safetensors"]


def test_a_folder_given_as_a_checkpoint_is_named_as_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder; give a checkpoint: the stem NAME") as error:
        load_checkpoint(tmp_path, build)
    assert str(error.value).startswith(f"{tmp_path}: ") and "\n" not in str(error.value)
