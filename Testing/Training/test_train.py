"""``metareg-train`` (Training.train and the modules it runs): config refusals, the run folder, determinism and
resume, kept tiny. Crash safety, Ctrl-C and resume refusals: test_run_folder.py; config types: test_config.py."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from MetaRegistrationLib.checkpoint import read_card
from MetaRegistrationLib.errors import CheckpointError, InputError
from MetaRegistrationLib.models import load_model
from MetaRegistrationLib.network import RegistrationNet
from Training import episodes
from Training.config import MODES, TrainConfig, load_config
from Training.reptile import beta_meta
from Training.train import main
from training_runs import keep_torch_threads, read_rows, run_training, tiny_config, weights, write_config  # noqa: F401

REPOSITORY = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 300.0
"""Bound on waiting for the training subprocess: generous, so only a hang fails it."""


# --- config validation and refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("mode: meta\nlearning_rate: 0.1\n", "learning_rate: unknown setting"),
    ("mode: reptile\n", "mode: input should be 'meta' or 'conventional' (got 'reptile')"),
    ("f_min: 5\nf_max: 3\n", "f_max: must be at least f_min (5) (got 3)"),
    ("mode: [meta\n", "is not valid YAML"),
    ("- mode\n- meta\n", "must be a mapping"),
    ("episodes: 0\n", "episodes: input should be greater than or equal to 1 (got 0)"),
    ("network: {num_channel_initial: 0}\n", "network.num_channel_initial: input should be greater than or equal to 1"),
], ids=["unknown-key", "bad-mode", "f_min-above-f_max", "bad-yaml", "not-a-mapping", "no-episodes", "bad-network"])
def test_bad_configs_are_refused_naming_the_file(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)) as raised:
        load_config(config)
    assert str(raised.value).startswith(f"{config}: ")
    run = tmp_path / "run"
    assert main(["meta", "--config", str(config), "--run", str(run)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"metareg-train: error: {config}: ")
    assert not run.exists()


def test_missing_config_file_is_an_input_error(tmp_path, capsys):
    assert main(["meta", "--config", str(tmp_path / "absent.yaml"), "--run", str(tmp_path / "run")]) == 2
    assert "absent.yaml: file not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["conventional", "--config", "{config}", "--run", "{fresh}"], "mode is 'meta', not 'conventional'"),
    (["meta", "--run", "{fresh}"], "--config is needed"),
    (["meta", "--config", "{config}", "--run", "{occupied}"], "holds no run (no config.yaml) but is not empty"),
    (["meta", "--run", "{occupied}", "--resume", "--config", "{config}"], "nothing to resume"),
], ids=["mode-mismatch", "no-config", "occupied-folder", "nothing-to-resume"])
def test_the_cli_refuses_runs_it_cannot_start(synthetic_dataset, tmp_path, capsys, argv, message):
    config = write_config(tmp_path / "c.yaml", tiny_config(synthetic_dataset))
    occupied, fresh = tmp_path / "occupied", tmp_path / "fresh"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    paths = {"config": config, "fresh": fresh, "occupied": occupied}
    assert main([a.format(**paths) for a in argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
    assert not fresh.exists()
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"] and (occupied / "notes.txt").read_text() == "mine"


# --- a tiny run ------------------------------------------------------------------------------------------------

def test_tiny_meta_run_writes_a_complete_run_folder(synthetic_dataset, tmp_path):
    values = tiny_config(synthetic_dataset)
    run = run_training(tmp_path, values, "run")
    names = {p.name for p in run.iterdir()}
    # A finished run keeps its weights once, and no checkpoints: latest points at final.
    assert names == {"config.yaml", "git_commit.txt", "log.csv", "val.csv", "latest.json", "final.safetensors",
                     "final.json"}
    # The saved config is the resolved one: it alone reproduces the run.
    assert load_config(run / "config.yaml") == TrainConfig.from_dict(values, "test")
    assert (run / "git_commit.txt").read_text().strip()
    log = read_rows(run / "log.csv")
    assert [row["episode"] for row in log] == ["0", "1", "2"]
    assert [float(row["beta_meta"]) for row in log] == [0.5, 0.25, 0.0]
    assert all(np.isfinite(float(row["loss"])) for row in log)
    (validation,) = read_rows(run / "val.csv")
    assert validation["episodes_done"] == "3"
    assert 0 < float(validation["mean_dsc"]) <= 1 and float(validation["median_tre_mm"]) >= 0
    assert read_card(run / "latest")["provenance"]["episodes_done"] == 3

    network, settings, card = load_model(run / "final")
    assert card["provenance"]["episodes_done"] == 3 and card["provenance"]["mode"] == "meta"
    assert card["provenance"]["training_config"] == TrainConfig.from_dict(values, "test").to_dict()
    assert settings == TrainConfig().adaptation
    torch.manual_seed(values["seed"])
    initial = RegistrationNet(network.config).state_dict()
    trained = network.state_dict()
    assert initial.keys() == trained.keys()
    assert any(not torch.equal(initial[name], trained[name]) for name in initial), "training changed no weight"


def test_the_same_config_twice_gives_identical_weights(synthetic_dataset, tmp_path):
    values = tiny_config(synthetic_dataset, validate_every=0)
    first, second = (weights(run_training(tmp_path, values, name) / "final") for name in ("one", "two"))
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_conventional_mode_trains(synthetic_dataset, tmp_path):
    values = tiny_config(synthetic_dataset, mode="conventional", episodes=2, validate_every=2)
    run = run_training(tmp_path, values, "run")
    log = read_rows(run / "log.csv")
    assert [row["episode"] for row in log] == ["0", "1"]
    assert all(row["beta_meta"] == "nan" for row in log)  # no meta step in this mode
    assert len(read_rows(run / "val.csv")) == 1
    network, _, card = load_model(run / "final")
    assert card["provenance"]["mode"] == "conventional" and card["provenance"]["episodes_done"] == 2
    torch.manual_seed(values["seed"])
    initial = RegistrationNet(network.config).state_dict()
    assert any(not torch.equal(initial[name], p) for name, p in network.state_dict().items())


# --- resume ----------------------------------------------------------------------------------------------------

def episodes_done(run: Path) -> int:
    try:
        return int(read_card(run / "latest")["provenance"]["episodes_done"])
    except CheckpointError:  # not written yet
        return 0


def test_a_run_killed_and_resumed_ends_as_an_uninterrupted_one(synthetic_dataset, tmp_path):
    values = tiny_config(synthetic_dataset, episodes=6, validate_every=0)
    config = write_config(tmp_path / "c.yaml", values)
    run = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "Training.train", "meta", "--config", str(config),
                                "--run", str(run)], cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while episodes_done(run) < 2:
            assert process.poll() is None, f"training exited early: {(tmp_path / 'killed.log').read_text()}"
            assert time.monotonic() < deadline, "training wrote no checkpoint with 2 episodes in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT_SECONDS)
        log.close()
    killed_at = episodes_done(run)
    assert 2 <= killed_at < 6 and not (run / "final.json").exists(), "the run was not interrupted"

    # A kill between an episode's log row and its checkpoint leaves a row the resumed run writes again;
    # make sure there is one, whenever the kill came.
    if int(read_rows(run / "log.csv")[-1]["episode"]) < killed_at:
        with open(run / "log.csv", "a", newline="") as handle:
            handle.write(f"{killed_at},a,0.1,0.1,1.0\n")

    assert main(["meta", "--run", str(run), "--resume"]) == 0
    card = read_card(run / "final")
    assert card["provenance"]["episodes_done"] == 6
    assert [row["episode"] for row in read_rows(run / "log.csv")] == [str(e) for e in range(6)]
    resumed = weights(run / "final")
    uninterrupted = weights(run_training(tmp_path, values, "whole") / "final")
    for name, value in uninterrupted.items():
        same = torch.allclose(resumed[name], value, rtol=0, atol=1e-7)
        assert same, f"{name} differs by up to {float((resumed[name] - value).abs().max()):.3g} after resuming"


class Interrupted(Exception):
    """Stands for a kill, in-process."""


def test_a_resumed_conventional_run_ends_as_an_uninterrupted_one(synthetic_dataset, tmp_path, monkeypatch):
    values = tiny_config(synthetic_dataset, mode="conventional", episodes=4, validate_every=0)
    uninterrupted = weights(run_training(tmp_path, values, "whole") / "final")
    problem = episodes.EpisodeSampler.problem

    def stop_at_episode_2(sampler, episode):
        if episode == 2:
            raise Interrupted
        return problem(sampler, episode)

    monkeypatch.setattr(episodes.EpisodeSampler, "problem", stop_at_episode_2)
    with pytest.raises(Interrupted):
        run_training(tmp_path, values, "cut")
    monkeypatch.setattr(episodes.EpisodeSampler, "problem", problem)
    assert main(["conventional", "--run", str(tmp_path / "cut"), "--resume"]) == 0
    resumed = weights(tmp_path / "cut" / "final")
    assert all(torch.allclose(resumed[name], value, rtol=0, atol=1e-7) for name, value in uninterrupted.items())


# --- the meta step size ----------------------------------------------------------------------------------------

def test_beta_meta_decays_linearly_from_start_to_end():
    config = TrainConfig(episodes=5, beta_meta_start=0.5, beta_meta_end=0.1)
    betas = [beta_meta(config, episode) for episode in range(5)]
    np.testing.assert_allclose(betas, [0.5, 0.4, 0.3, 0.2, 0.1], atol=1e-12)
    assert beta_meta(TrainConfig(episodes=1, beta_meta_start=0.3), 0) == 0.3


def test_every_shipped_config_is_valid():
    configs = sorted((Path(__file__).resolve().parents[2] / "Training" / "configs").glob("*.yaml"))
    assert len(configs) >= 8
    for path in configs:
        config = load_config(path)
        assert config.mode in MODES


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_the_inner_steps_compute_in_the_configured_precision(synthetic_dataset, tmp_path, monkeypatch, precision):
    from MetaRegistrationLib.network import RegistrationNet
    from MetaRegistrationLib.precision import resolve_precision

    seen = set()
    forward = RegistrationNet.forward
    monkeypatch.setattr(RegistrationNet, "forward", lambda self, inputs: seen.add(self.precision) or forward(self,
                                                                                                            inputs))
    run_training(tmp_path, tiny_config(synthetic_dataset, precision=precision, validate_every=0), "run")
    assert seen == {resolve_precision(precision, torch.device("cpu"))}
