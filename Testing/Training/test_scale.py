"""Training at scale: batched Reptile (vmap) against the same episodes one by one, ``torchrun`` with gloo against
one process (and resuming a killed rank-set), the time limit, and CPU against GPU where there is one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from MetaRegistrationLib.data import Dataset
from MetaRegistrationLib.network import RegistrationNet
from Training.config import TrainConfig
from Training.episodes import EpisodeSampler
from Training.reptile import adapted_weight_sum
from Training.train import main

from training_runs import keep_torch_threads, read_rows, run_training, tiny_config, weights, write_config  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], **tolerance) -> bool:
    """The same weights: bit for bit, or to ``tolerance`` (``torch.allclose``'s)."""
    return first.keys() == second.keys() and all(
        torch.allclose(first[n], second[n], **tolerance) if tolerance else torch.equal(first[n], second[n])
        for n in first)


def test_a_vectorised_batch_equals_its_episodes_adapted_one_by_one(synthetic_dataset):
    """vmap over stacked weights with one Adam == each episode's own copy and Adam, to rounding. The rounding of
    vmap's grouped convolutions shows most in the near-zero gradients of a fresh network, which Adam's first step
    scales up to about ``lr`` (observed: 0.2% of a weight change's norm; a mixed-up episode would be 100%)."""
    config = TrainConfig.from_dict(tiny_config(synthetic_dataset, episodes=3, meta_batch=3, checkpoint_every=3,
                                               inner_steps=1), "tiny")
    sampler = EpisodeSampler([Dataset(synthetic_dataset).load("a")], config)
    problems = [sampler.problem(episode)[0] for episode in range(3)]
    torch.manual_seed(0)
    model = RegistrationNet(config.network)
    before = {name: weight.detach().clone() for name, weight in model.named_parameters()}
    batched, batched_losses = adapted_weight_sum(model, problems, config, vectorised=True)
    one_by_one, losses = adapted_weight_sum(model, problems, config, vectorised=False)
    assert batched.keys() == one_by_one.keys()
    for name, change in one_by_one.items():
        assert float((batched[name] - change).norm()) <= 1e-2 * float(change.norm()), name
    assert batched_losses == pytest.approx(losses, rel=1e-5)
    assert all(torch.equal(before[name], weight) for name, weight in model.named_parameters())  # model unchanged
    separately = [adapted_weight_sum(model, [problem], config)[0] for problem in problems]
    assert all(torch.equal(sum(part[name] for part in separately), one_by_one[name]) for name in one_by_one)


def _torchrun(config: Path, run: Path, *extra: str, **popen) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m Training.train meta ...`` on the CPU (gloo), one thread a rank
    (``--run-folder``: torchrun reads ``--run`` as an abbreviation of its own ``--run-path``)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "Training.train", "meta", "--run-folder", str(run), "--device", "cpu", *extra]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def test_two_gloo_ranks_train_as_one_process_and_resume_after_a_kill(synthetic_dataset, tmp_path):
    values = tiny_config(synthetic_dataset, episodes=12, meta_batch=2, checkpoint_every=2, validate_every=12)
    alone = run_training(tmp_path, values, "alone")
    config = write_config(tmp_path / "ranks.yaml", values)

    together = tmp_path / "together"
    _finish(_torchrun(config, together))
    assert same(weights(together / "final"), weights(alone / "final"))
    rows = read_rows(together / "log.csv")
    assert [int(row["episode"]) for row in rows] == list(range(12))  # rank 0 logs every rank's episodes
    assert [row["case"] for row in rows] == [row["case"] for row in read_rows(alone / "log.csv")]
    assert len(read_rows(together / "val.csv")) == 1

    killed = tmp_path / "killed"
    process = _torchrun(config, killed, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (killed / "latest.json").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    # torchrun starts its ranks in sessions of their own: kill every process of this run, the ranks first.
    subprocess.run(["pkill", "-KILL", "-f", f"Training.train meta --run-folder {killed} "], check=False)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert not (killed / "final.safetensors").exists(), "the run ended before it could be killed"
    _finish(_torchrun(None, killed, "--resume"))
    assert same(weights(killed / "final"), weights(alone / "final"))
    assert [int(row["episode"]) for row in read_rows(killed / "log.csv")] == list(range(12))


def test_ranks_must_share_the_batch_evenly(synthetic_dataset, tmp_path):
    config = write_config(tmp_path / "odd.yaml", tiny_config(synthetic_dataset, episodes=3, meta_batch=1))
    process = _torchrun(config, tmp_path / "odd")
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "meta_batch (1) must be a multiple of the 2 ranks" in output
    assert not (tmp_path / "odd").exists()


def test_a_time_limit_checkpoints_stops_and_resumes_to_the_same_weights(synthetic_dataset, tmp_path, capsys):
    values = tiny_config(synthetic_dataset, episodes=4, checkpoint_every=2, validate_every=0)
    whole = run_training(tmp_path, values, "whole")
    config = write_config(tmp_path / "limited.yaml", values)
    run = tmp_path / "limited"
    assert main(["meta", "--config", str(config), "--run", str(run), "--time-limit", "1e-6"]) == 0
    assert "stopped at the time limit after 1 of 4 episodes" in capsys.readouterr().err
    assert not (run / "final.safetensors").exists()
    assert main(["meta", "--run", str(run), "--resume"]) == 0
    assert torch.equal(torch.cat([w.reshape(-1) for w in weights(run / "final").values()]),
                       torch.cat([w.reshape(-1) for w in weights(whole / "final").values()]))


@pytest.mark.parametrize("limit", ["0", "-1", "soon", "inf"])
def test_a_bad_time_limit_is_one_line(limit, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["meta", "--run", str(tmp_path / "r"), "--config", "x.yaml", "--time-limit", limit])
    assert "--time-limit" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_a_tiny_run_trains_the_same_on_cpu_and_gpu(synthetic_dataset, tmp_path):
    values = tiny_config(synthetic_dataset, episodes=3, meta_batch=1, validate_every=0)
    runs = {}
    for device in ("cpu", "cuda"):
        config = write_config(tmp_path / f"{device}.yaml", values)
        runs[device] = tmp_path / device
        assert main(["meta", "--config", str(config), "--run", str(runs[device]), "--device", device]) == 0
    assert same(weights(runs["cuda"] / "final"), weights(runs["cpu"] / "final"), rtol=1e-3, atol=1e-5)
