"""Training.run_folder through ``metareg-train``: a run stopped anywhere (a crash between the steps of a
checkpoint, Ctrl-C, a full disk) resumes to the weights of an uninterrupted run; what cannot be resumed, or
started, is refused in one line, and a refused run leaves no folder."""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from MetaRegistrationLib import checkpoint
from MetaRegistrationLib.checkpoint import read_card, resolve_checkpoint
from MetaRegistrationLib.models import load_model
from Training import episodes, run_folder
from Training.config import load_config
from Training.run_folder import RunFolder, optimizer_state_path
from Training.train import INTERRUPTED, main
from training_runs import (conventional, keep_torch_threads, read_rows, run_training,  # noqa: F401
                           same_weights, tiny_config, uninterrupted, weights, write_config)

REPOSITORY = Path(__file__).resolve().parents[2]
FINISHED_RUN = {"config.yaml", "git_commit.txt", "log.csv", "latest.json", "final.safetensors", "final.json"}
"""A finished run without validation: its weights once (``latest`` points at ``final``), no optimiser state."""


class Crash(BaseException):
    """Stands for the process dying at one step (not an error any code handles)."""


def error_line(capsys) -> str:
    """The last line on stderr (progress bars and notices come before it)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def stop_at_episode(monkeypatch, stop: int, exception: type[BaseException]) -> None:
    problem = episodes.EpisodeSampler.problem

    def stopping(sampler, episode):
        if episode == stop:
            raise exception
        return problem(sampler, episode)

    monkeypatch.setattr(episodes.EpisodeSampler, "problem", stopping)


def resume(run: Path, mode: str = "conventional") -> int:
    return main([mode, "--run", str(run), "--resume"])


def assert_finished_as(run: Path, uninterrupted: dict, episodes_done: int) -> None:
    assert same_weights(weights(run / "final"), uninterrupted)
    assert [row["episode"] for row in read_rows(run / "log.csv")] == [str(e) for e in range(episodes_done)]
    assert {p.name for p in run.iterdir()} == FINISHED_RUN
    assert resolve_checkpoint(run / "latest") == run / "final"


# --- crash safety -------------------------------------------------------------------------------------------

def test_a_crash_at_any_step_leaves_a_valid_checkpoint_and_resumes_exactly(conventional, tmp_path, monkeypatch):
    """Every os.rename, os.replace and os.unlink of a run (creating it, the checkpoint steps, finishing) is a place
    where the process may die: at each, ``latest`` must name a complete pair with its optimiser state, and the
    resumed run must end with the uninterrupted weights. (Kills that skip all clean-up: test_run_recovery.py.)"""
    conventional = {**conventional, "episodes": 2}  # two checkpoints: the second replaces the first
    real = {"rename": os.rename, "replace": os.replace, "unlink": os.unlink}
    calls = {"count": 0, "crash_at": None}

    def step(name):
        def counted(*args, **kwargs):
            calls["count"] += 1
            if calls["count"] == calls["crash_at"]:
                raise Crash(f"{name} #{calls['count']}")
            return real[name](*args, **kwargs)
        return counted

    for name in real:
        monkeypatch.setattr(os, name, step(name))
    uninterrupted = weights(run_training(tmp_path, conventional, "counted") / "final")
    steps = calls["count"]
    assert steps >= 20  # two files to create; per checkpoint, four replacements, their clean-ups and removals

    config = write_config(tmp_path / "cut.yaml", conventional)
    for crash_at in range(1, steps + 1):
        run = tmp_path / f"cut-{crash_at}"
        calls.update(count=0, crash_at=crash_at)
        with pytest.raises(Crash):
            main(["conventional", "--config", str(config), "--run", str(run)])
        calls["crash_at"] = None
        if (run / "latest.json").exists():
            stem = resolve_checkpoint(run / "latest")
            load_model(stem)  # a complete pair, whose checksum matches
            assert stem.name == "final" or optimizer_state_path(stem).is_file(), f"crash at step {crash_at}"
        if (run / "config.yaml").exists():
            assert resume(run) == 0, f"crash at step {crash_at}"
        else:  # the run was not made: start it again
            assert not run.exists(), f"crash at step {crash_at}"
            assert main(["conventional", "--config", str(config), "--run", str(run)]) == 0
        assert_finished_as(run, uninterrupted, 2)


def test_a_resumed_run_removes_what_a_killed_one_left_half_written(conventional, uninterrupted, tmp_path,
                                                                   monkeypatch):
    stop_at_episode(monkeypatch, 2, KeyboardInterrupt)
    run = tmp_path / "run"
    assert main(["conventional", "--config", str(write_config(tmp_path / "c.yaml", conventional)),
                 "--run", str(run)]) == INTERRUPTED
    monkeypatch.undo()
    # What a kill during a write leaves: temporary files, and a newer version whose pointer never moved.
    (run / ".checkpoint-000003.json.123.abcd.tmp").write_text("{")
    (run / ".log.xyz.tmp.csv").write_text("episode")
    (run / "checkpoint-000003.safetensors").write_bytes(b"partial")
    with open(run / "log.csv", "a") as log:
        log.write("2,a,0.1")  # a row cut short
    assert resume(run) == 0
    assert_finished_as(run, uninterrupted, 3)


# --- Ctrl-C ------------------------------------------------------------------------------------------------------

def test_ctrl_c_says_how_to_resume_and_the_run_resumes_exactly(conventional, uninterrupted, tmp_path, capsys,
                                                                monkeypatch):
    stop_at_episode(monkeypatch, 2, KeyboardInterrupt)
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", conventional)
    assert main(["conventional", "--config", str(config), "--run", str(run)]) == INTERRUPTED
    assert error_line(capsys) == f"metareg-train: interrupted; resume with: metareg-train conventional --run {run} " \
                                 f"--resume"
    assert read_card(run / "latest")["provenance"]["episodes_done"] == 2
    monkeypatch.undo()
    assert resume(run) == 0
    assert_finished_as(run, uninterrupted, 3)


def test_ctrl_c_before_the_run_starts_writes_nothing(conventional, tmp_path, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(episodes.EpisodeSampler, "__init__", interrupted)
    run = tmp_path / "run"
    assert main(["conventional", "--config", str(write_config(tmp_path / "c.yaml", conventional)),
                 "--run", str(run)]) == INTERRUPTED
    assert error_line(capsys) == "metareg-train: interrupted before the run started; nothing was written"
    assert not run.exists()


# --- a full disk ------------------------------------------------------------------------------------------------

def full_disk(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["log", "checkpoint"])
def test_a_full_disk_is_one_line_naming_the_file_and_the_run_resumes(conventional, uninterrupted, tmp_path,
                                                                     capsys, monkeypatch, where):
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", conventional)
    opened = []

    def open_filling_up(path, mode="r", *args, **kwargs):
        if Path(path).name == "log.csv" and "a" in mode:
            opened.append(path)
            if len(opened) == 3:  # the third episode's row
                full_disk()
        return open(path, mode, *args, **kwargs)

    if where == "log":
        monkeypatch.setattr(run_folder, "open", open_filling_up, raising=False)
        failed = run / "log.csv"
    else:
        stop = episodes.EpisodeSampler.problem

        def fill_up_after_episode_1(sampler, episode):
            if episode == 1:
                monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
            return stop(sampler, episode)

        monkeypatch.setattr(episodes.EpisodeSampler, "problem", fill_up_after_episode_1)
        failed = run / "checkpoint-000002.safetensors"
    assert main(["conventional", "--config", str(config), "--run", str(run)]) == 2
    assert error_line(capsys) == (f"metareg-train: error: {failed}: cannot be written (No space left on device); "
                                  f"the run can be resumed once it is fixed: metareg-train conventional --run {run} "
                                  f"--resume")
    monkeypatch.undo()
    load_model(run / "latest")
    assert resume(run) == 0
    assert_finished_as(run, uninterrupted, 3)


# --- refusals -----------------------------------------------------------------------------------------------------

@pytest.fixture
def stopped_run(conventional, tmp_path, monkeypatch) -> Path:
    """A conventional run stopped after 2 of its 3 episodes."""
    stop_at_episode(monkeypatch, 2, KeyboardInterrupt)
    run = tmp_path / "stopped"
    assert main(["conventional", "--config", str(write_config(tmp_path / "c.yaml", conventional)),
                 "--run", str(run)]) == INTERRUPTED
    monkeypatch.undo()
    return run


def test_resuming_with_a_different_config_is_refused(stopped_run, conventional, tmp_path, capsys):
    other = write_config(tmp_path / "other.yaml", {**conventional, "episodes": 4, "inner_learning_rate": 0.01})
    assert main(["conventional", "--run", str(stopped_run), "--resume", "--config", str(other)]) == 2
    assert error_line(capsys) == (f"metareg-train: error: {other}: differs from the run's {stopped_run}/config.yaml "
                                  f"(episodes: 4 vs 3; inner_learning_rate: 0.01 vs 0.001); resume without "
                                  f"--config, or start a new run folder")
    assert read_card(stopped_run / "latest")["provenance"]["episodes_done"] == 2
    same = write_config(tmp_path / "same.yaml", conventional)
    assert main(["conventional", "--run", str(stopped_run), "--resume", "--config", str(same)]) == 0


NOT_OPTIMISER_STATE = "refused, it is not plain optimiser state (it is corrupt, or a pickle that loading would run " \
                      "code from)"


def evil_pickle(path: Path) -> None:
    class RunsCode:
        def __reduce__(self):
            return exec, ("raise SystemExit('the optimiser file ran code')",)

    path.write_bytes(pickle.dumps({"state": RunsCode()}, protocol=2))


@pytest.mark.parametrize("damage, problem", [
    (lambda path: path.unlink(), "file not found; a conventional run resumes with the optimiser state of its "
                                 "checkpoint checkpoint-000002"),
    (lambda path: path.write_bytes(path.read_bytes()[:200]), "cannot be read as optimiser state, it is truncated "
                                                             "or corrupt"),
    (lambda path: path.write_bytes(b""), "cannot be read as optimiser state, it is truncated or corrupt"),
    (evil_pickle, NOT_OPTIMISER_STATE),
    (lambda path: path.write_bytes(bytes(random.Random(1).getrandbits(8) for _ in range(100))),
     NOT_OPTIMISER_STATE),
    (lambda path: path.write_bytes(b"\x80\x02}q"), NOT_OPTIMISER_STATE),  # the weights-only unpickler: IndexError
    (lambda path: torch.save({"state": {}, "param_groups": []}, path), "does not fit this run's optimiser"),
], ids=["missing", "truncated", "empty", "pickle-running-code", "random-bytes", "broken-pickle", "another-optimiser"])
def test_a_conventional_run_with_bad_optimiser_state_is_refused(stopped_run, capsys, damage, problem):
    state = stopped_run / "checkpoint-000002-optimizer.pt"
    assert state.is_file()
    damage(state)
    before = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()}
    assert resume(stopped_run) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"metareg-train: error: {state}: {problem}"), lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()} == before


def test_an_older_runs_optimiser_state_is_found(stopped_run, conventional, uninterrupted):
    """A run written before versioned checkpoints: a plain ``latest`` pair and ``latest-optimizer.pt``."""
    stem = resolve_checkpoint(stopped_run / "latest")
    (stopped_run / "latest.json").unlink()
    for suffix in (".safetensors", ".json", "-optimizer.pt"):
        os.replace(stem.with_name(stem.name + suffix), stopped_run / f"latest{suffix}")
    assert resume(stopped_run) == 0
    assert_finished_as(stopped_run, uninterrupted, 3)


@pytest.mark.parametrize("breakage", ["unknown-split", "broken-case", "missing-val-case"])
def test_a_run_whose_data_check_fails_leaves_no_folder(synthetic_dataset, tmp_path, capsys, breakage):
    values = tiny_config(synthetic_dataset)
    if breakage == "unknown-split":
        values["train_split"] = "training"
    elif breakage == "broken-case":
        (synthetic_dataset / "fixed_images" / "a.nii.gz").write_bytes(b"not an image")
    else:
        (synthetic_dataset / "moving_labels" / "b.nii.gz").unlink()
    run = tmp_path / "runs" / "run"
    assert main(["meta", "--config", str(write_config(tmp_path / "c.yaml", values)), "--run", str(run)]) == 2
    assert error_line(capsys).startswith(f"metareg-train: error: {synthetic_dataset}")
    assert not run.exists()


def test_a_folder_left_half_made_does_not_block_a_new_run(synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("mode: meta\n")  # what a run refused after creating its folder once left
    (run / "git_commit.txt").write_text("abc\n")
    values = tiny_config(synthetic_dataset, validate_every=0)
    assert main(["meta", "--config", str(write_config(tmp_path / "c.yaml", values)), "--run", str(run)]) == 0
    assert load_config(run / "config.yaml").data == str(synthetic_dataset)


def test_a_run_inside_the_data_folder_is_refused(synthetic_dataset, tmp_path, capsys):
    run = synthetic_dataset / "run"
    values = tiny_config(synthetic_dataset)
    assert main(["meta", "--config", str(write_config(tmp_path / "c.yaml", values)), "--run", str(run)]) == 2
    assert "lies inside the data folder" in error_line(capsys)
    assert not run.exists()


def test_resuming_a_finished_run_changes_nothing(conventional, tmp_path):
    run = run_training(tmp_path, conventional, "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert resume(run) == 0
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_run_stopped_before_its_first_checkpoint_starts_over(conventional, uninterrupted, tmp_path, monkeypatch):
    stop_at_episode(monkeypatch, 0, KeyboardInterrupt)
    run = tmp_path / "run"
    assert main(["conventional", "--config", str(write_config(tmp_path / "c.yaml", conventional)),
                 "--run", str(run)]) == INTERRUPTED
    assert {p.name for p in run.iterdir()} == {"config.yaml", "git_commit.txt"}
    monkeypatch.undo()
    assert resume(run) == 0
    assert_finished_as(run, uninterrupted, 3)


# --- the committed runs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, config, finished", [
    ("meta-v1", "meta", True),
    ("meta-bending100", "meta-bending100", False),
    ("conventional-sparse10", "conventional-sparse10", True),
])
def test_the_committed_runs_still_resume(name, config, finished):
    """Each resumes from the checkpoint its ``latest`` names: a plain pair from before versioned checkpoints, or a
    pointer once the run has gone on (read here, never written)."""
    run = RunFolder(REPOSITORY / "Training" / "runs" / name, "meta")
    saved = run.config_to_resume(REPOSITORY / "Training" / "configs" / f"{config}.yaml")
    point = run.resume_point()
    assert point.checkpoint == resolve_checkpoint(run.latest)
    assert point.episodes_done == read_card(run.latest)["provenance"]["episodes_done"] > 0
    assert point.model.network.config == saved.network and point.model.settings == saved.adaptation
    assert run.final_is_complete() == finished
