"""What ``metareg-train`` makes of a run folder someone or something damaged: a start killed while it created
the folder, a start into a folder that holds no run, splits with no cases, and a run whose ``latest`` pointer is
missing or names a broken checkpoint. Each is either picked up (saying so) or refused in one line naming the file,
with exit status 2 and nothing half-made."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from MetaRegistrationLib.checkpoint import resolve_checkpoint
from Training import episodes
from Training.config import TrainConfig, load_config
from Training.run_folder import RunFolder
from Training.train import INTERRUPTED, main
from training_runs import (conventional, keep_torch_threads, read_rows, run_training,  # noqa: F401
                           same_weights, tiny_config, uninterrupted, weights, write_config)

CREATED = {"config.yaml", "git_commit.txt"}
"""What a run folder holds from its creation until its first episode is logged."""
KILLED = 77
"""The exit status of a child process killed at a step (``os._exit``: no clean-up runs, as after SIGKILL)."""


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def only_error_line(capsys) -> str:
    """The one line on stderr of a refusal (no progress bar, no traceback)."""
    lines = stderr_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("metareg-train: error: ") and "Traceback" not in lines[0]
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def stop_at_episode(monkeypatch, stop: int) -> None:
    problem = episodes.EpisodeSampler.problem

    def stopping(sampler, episode):
        if episode == stop:
            raise KeyboardInterrupt
        return problem(sampler, episode)

    monkeypatch.setattr(episodes.EpisodeSampler, "problem", stopping)


def record_episodes(monkeypatch) -> list[int]:
    """The episodes the next runs train, in order."""
    ran = []
    problem = episodes.EpisodeSampler.problem

    def recording(sampler, episode):
        ran.append(episode)
        return problem(sampler, episode)

    monkeypatch.setattr(episodes.EpisodeSampler, "problem", recording)
    return ran


def start(config: Path, run: Path, mode: str = "meta") -> int:
    return main([mode, "--config", str(config), "--run", str(run)])


def resume(run: Path, mode: str = "conventional") -> int:
    return main([mode, "--run", str(run), "--resume"])


# --- creating the run folder ----------------------------------------------------------------------------------------

def kill_at_step(step: int) -> None:
    """In a child process: die (no clean-up, as SIGKILL) before its ``step``-th file-system call."""
    calls = [0]

    def counted(function):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == step:
                os._exit(KILLED)
            return function(*args, **kwargs)
        return call

    for name in ("open", "mkdir", "chmod", "fsync", "replace", "rename", "unlink", "rmdir"):
        setattr(os, name, counted(getattr(os, name)))


def create_killed_at(step: int, run: Path, config: TrainConfig, data: Path) -> int:
    """Create ``run`` in a forked child killed at ``step``; its exit status (0: it was not killed)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            signal.alarm(60)
            folder = RunFolder(run, config.mode)
            kill_at_step(step)
            folder.check_can_start(data)
            folder.create(config)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_kill_at_any_step_of_creating_a_run_leaves_a_run_or_nothing(synthetic_dataset, tmp_path, monkeypatch):
    """Killed anywhere while it creates the folder, a start leaves either no run folder or a complete one, and
    what it had staged beside it is removed by the next start, which works."""
    values = tiny_config(synthetic_dataset)
    config, config_file = TrainConfig.from_dict(values, "test"), write_config(tmp_path / "c.yaml", values)
    parent = tmp_path / "runs"
    run = parent / "run"
    stop_at_episode(monkeypatch, 0)  # the start after each kill: creating the folder is what is tested
    for step in range(1, 100):
        code = create_killed_at(step, run, config, synthetic_dataset)
        if code == 0:
            break
        assert code == KILLED
        if run.exists():
            assert {p.name for p in run.iterdir()} == CREATED, f"killed at step {step}"
            assert load_config(run / "config.yaml") == config
        assert start(config_file, run) == INTERRUPTED, f"killed at step {step}"
        assert [p.name for p in parent.iterdir()] == ["run"], f"killed at step {step}"
        assert {p.name for p in run.iterdir()} == CREATED
        shutil.rmtree(parent)
    else:
        pytest.fail("creating the run folder never finished")
    assert step > 3
    assert {p.name for p in run.iterdir()} == CREATED and [p.name for p in parent.iterdir()] == ["run"]


def test_what_an_older_killed_start_left_does_not_block_a_new_one(synthetic_dataset, tmp_path):
    parent = tmp_path / "runs"
    run = parent / "run"
    run.mkdir(parents=True)
    (run / "git_commit.txt").write_text("abc\n")  # killed while config.yaml was still a temporary file
    (run / ".config.k2j3.tmp.yaml").write_text("mode: me")
    for staging in (".run.partial-x1y2", ".run.creating-999999999-abcd"):  # killed before the rename
        (parent / staging).mkdir()
        (parent / staging / "git_commit.txt").write_text("abc\n")
    (parent / "other").mkdir()  # not this run's: left alone
    values = tiny_config(synthetic_dataset, validate_every=0)
    assert start(write_config(tmp_path / "c.yaml", values), run) == 0
    assert sorted(p.name for p in parent.iterdir()) == ["other", "run"]
    assert load_config(run / "config.yaml") == TrainConfig.from_dict(values, "test")


def test_a_run_can_start_in_an_empty_folder(synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    values = tiny_config(synthetic_dataset, validate_every=0)
    assert start(write_config(tmp_path / "c.yaml", values), run) == 0
    assert (run / "final.json").is_file() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_folder_holding_something_else_is_refused_saying_it_holds_no_run(synthetic_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert start(write_config(tmp_path / "c.yaml", tiny_config(synthetic_dataset)), run) == 2
    assert only_error_line(capsys) == (f"metareg-train: error: {run}: holds no run (no config.yaml) but is not "
                                       f"empty; choose an empty or a new folder for the run")
    assert files(run) == {"notes.txt": b"mine"} and sorted(p.name for p in tmp_path.iterdir()) == [
        "c.yaml", "data", "run"]


def test_a_folder_holding_a_run_is_refused_saying_so(stopped_run, tmp_path, capsys):
    before = files(stopped_run)
    assert start(stopped_run.parent / "c.yaml", stopped_run, "conventional") == 2
    assert only_error_line(capsys) == (f"metareg-train: error: {stopped_run}: already holds a run; use --resume to "
                                       f"continue it or choose a new folder")
    assert files(stopped_run) == before


# --- splits with no cases ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("splits, overrides, problem", [
    ({"train": [], "val": ["b"]}, {}, "split 'train' is empty; training needs at least one case (train_split: "
                                      "train)"),
    ({"train": ["a"], "val": []}, {}, "split 'val' is empty; validation needs at least one case (val_split: val), "
                                      "or set validate_every: 0"),
    ({"train": ["a"], "holdout": []}, {"val_split": "holdout"}, "split 'holdout' is empty; validation needs at "
                                                                "least one case (val_split: holdout)"),
], ids=["train", "val", "named-val"])
def test_an_empty_split_is_refused_before_anything_is_made(synthetic_dataset, tmp_path, capsys, splits, overrides,
                                                           problem):
    (synthetic_dataset / "split.json").write_text(json.dumps(splits))
    run = tmp_path / "runs" / "run"
    values = tiny_config(synthetic_dataset, **overrides)
    assert start(write_config(tmp_path / "c.yaml", values), run) == 2
    line = only_error_line(capsys)
    assert line.startswith(f"metareg-train: error: {synthetic_dataset / 'split.json'}: {problem}"), line
    assert not run.exists() and not run.parent.exists()


def test_an_empty_val_split_is_no_matter_without_validation(synthetic_dataset, tmp_path):
    (synthetic_dataset / "split.json").write_text('{"train": ["a"], "val": []}')
    run_training(tmp_path, tiny_config(synthetic_dataset, validate_every=0), "run")


@pytest.mark.parametrize("split", ["train", "val"])
def test_resuming_on_an_empty_split_names_it_and_changes_nothing(stopped_run, synthetic_dataset, capsys, split):
    splits = {"train": ["a"], "val": ["b"], split: []}
    (synthetic_dataset / "split.json").write_text(json.dumps(splits))
    values = {**load_config(stopped_run / "config.yaml").to_dict(), "validate_every": 2}
    write_config(stopped_run / "config.yaml", values)  # a run that validates
    before = files(stopped_run)
    assert resume(stopped_run) == 2
    line = only_error_line(capsys)
    assert line.startswith(f"metareg-train: error: {synthetic_dataset / 'split.json'}: split {split!r} is empty"), line
    assert files(stopped_run) == before


# --- a missing or broken pointer ------------------------------------------------------------------------------------

@pytest.fixture
def stopped_run(conventional, tmp_path, monkeypatch) -> Path:
    """A conventional run stopped after 2 of its 3 episodes: ``latest`` points at checkpoint-000002."""
    run = tmp_path / "stopped"
    stop_at_episode(monkeypatch, 2)
    assert start(write_config(tmp_path / "c.yaml", conventional), run, "conventional") == INTERRUPTED
    monkeypatch.undo()
    assert resolve_checkpoint(run / "latest") == run / "checkpoint-000002"
    return run


def assert_finished_as(run: Path, uninterrupted: dict) -> None:
    assert same_weights(weights(run / "final"), uninterrupted)
    assert [row["episode"] for row in read_rows(run / "log.csv")] == ["0", "1", "2"]
    assert {p.name for p in run.iterdir()} == CREATED | {"log.csv", "latest.json", "final.safetensors", "final.json"}
    assert resolve_checkpoint(run / "latest") == run / "final"


def test_a_run_without_its_pointer_resumes_from_its_newest_checkpoint(stopped_run, uninterrupted, capsys,
                                                                       monkeypatch):
    (stopped_run / "latest.json").unlink()
    ran = record_episodes(monkeypatch)
    assert resume(stopped_run) == 0
    assert ran == [2]  # not from episode 0
    notices = [line for line in stderr_lines(capsys) if "notice" in line]
    assert notices == [f"metareg-train: notice: {stopped_run / 'latest.json'}: file not found; resuming from "
                       f"checkpoint-000002 (after 2 episodes), the newest complete checkpoint"]
    assert_finished_as(stopped_run, uninterrupted)


def test_a_recovered_checkpoint_is_kept_when_the_resumed_run_stops_at_once(stopped_run, monkeypatch):
    (stopped_run / "latest.json").unlink()
    before = files(stopped_run)
    stop_at_episode(monkeypatch, 2)
    assert resume(stopped_run) == INTERRUPTED
    assert resolve_checkpoint(stopped_run / "latest") == stopped_run / "checkpoint-000002"  # the pointer is back
    assert {name: data for name, data in files(stopped_run).items() if name != "latest.json"} == before


def test_a_pointer_at_a_broken_checkpoint_falls_back_to_the_newest_complete_one(conventional, uninterrupted,
                                                                                 tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    stop_at_episode(monkeypatch, 1)
    assert start(write_config(tmp_path / "c.yaml", conventional), run, "conventional") == INTERRUPTED
    first = {name: data for name, data in files(run).items() if name.startswith("checkpoint-000001")}
    assert len(first) == 3  # weights, card, optimiser state
    monkeypatch.undo()
    stop_at_episode(monkeypatch, 2)
    assert resume(run) == INTERRUPTED
    monkeypatch.undo()
    for name, data in first.items():  # an older version a removal never got to
        (run / name).write_bytes(data)
    broken = run / "checkpoint-000002.safetensors"
    broken.write_bytes(broken.read_bytes()[:-8] + b"tampered")
    capsys.readouterr()
    ran = record_episodes(monkeypatch)
    assert resume(run) == 0
    assert ran == [1, 2]
    (notice,) = [line for line in stderr_lines(capsys) if "notice" in line]
    assert notice.startswith(f"metareg-train: notice: {broken}: checksum mismatch")
    assert notice.endswith("; resuming from checkpoint-000001 (after 1 episode), the newest complete checkpoint")
    assert_finished_as(run, uninterrupted)


@pytest.mark.parametrize("damage", ["checksum", "card-gone", "all-gone"])
def test_a_run_with_no_complete_checkpoint_left_is_refused_not_started_over(stopped_run, capsys, damage):
    (stopped_run / "latest.json").unlink()
    if damage == "checksum":
        weights_file = stopped_run / "checkpoint-000002.safetensors"
        weights_file.write_bytes(weights_file.read_bytes()[:-8] + b"tampered")
    elif damage == "card-gone":
        (stopped_run / "checkpoint-000002.json").unlink()
    else:  # only the log says that checkpoints were saved
        for path in stopped_run.glob("checkpoint-*"):
            path.unlink()
    before = files(stopped_run)
    assert resume(stopped_run) == 2
    line = only_error_line(capsys)
    assert line.startswith(f"metareg-train: error: {stopped_run / 'latest.json'}: file not found, and no complete "
                           f"checkpoint is left to resume from"), line
    assert files(stopped_run) == before


def test_a_pointer_at_the_only_checkpoint_broken_is_refused_naming_the_file(stopped_run, capsys):
    weights_file = stopped_run / "checkpoint-000002.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-8] + b"tampered")
    before = files(stopped_run)
    assert resume(stopped_run) == 2
    line = only_error_line(capsys)
    assert line.startswith(f"metareg-train: error: {weights_file}: checksum mismatch"), line
    assert line.endswith("; no other complete checkpoint is left to resume from (nothing was changed)")
    assert files(stopped_run) == before


def test_a_recovered_run_refused_later_says_only_why(stopped_run, capsys):
    """The notice is said once the run goes on: a refusal after it is still the only line."""
    (stopped_run / "latest.json").unlink()
    (stopped_run / "checkpoint-000002-optimizer.pt").write_bytes(b"\x80\x02}q")
    before = files(stopped_run)
    assert resume(stopped_run) == 2
    assert only_error_line(capsys).startswith(f"metareg-train: error: {stopped_run}/checkpoint-000002-optimizer.pt: "
                                              f"refused, it is not plain optimiser state")
    assert files(stopped_run) == before


def test_a_finished_run_without_its_pointer_stays_finished(conventional, tmp_path, capsys, monkeypatch):
    run = run_training(tmp_path, conventional, "run")
    before = files(run)
    (run / "latest.json").unlink()
    ran = record_episodes(monkeypatch)
    capsys.readouterr()
    assert resume(run) == 0
    assert ran == []
    assert any("resuming from final (after 3 episodes)" in line for line in stderr_lines(capsys))
    assert files(run) == before


def test_a_run_stopped_during_its_first_checkpoint_starts_over(conventional, uninterrupted, tmp_path, monkeypatch):
    """Killed after writing the first checkpoint's optimiser state and weights, before its card: nothing of it is a
    checkpoint, so the run starts over (without a notice)."""
    run = tmp_path / "run"
    stop_at_episode(monkeypatch, 1)
    assert start(write_config(tmp_path / "c.yaml", conventional), run, "conventional") == INTERRUPTED
    monkeypatch.undo()
    for name in ("latest.json", "checkpoint-000001.json"):
        (run / name).unlink()
    with open(run / "log.csv", "w") as log:
        log.write("episode,case,loss,beta_meta,wall_seconds\n0,a,0.1,nan,0.1\n")
    ran = record_episodes(monkeypatch)
    assert resume(run) == 0
    assert ran == [0, 1, 2]
    assert_finished_as(run, uninterrupted)
