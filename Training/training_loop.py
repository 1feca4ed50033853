"""The training loop: episodes from :mod:`.episodes`, updates from :mod:`.reptile`, files in a :class:`RunFolder`.

Every episode is seeded from (seed, episode) alone (NumPy for the episode's draw, torch for the update), so a
resumed run draws and trains the same episodes as an uninterrupted one and ends with the same weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from MetaRegistrationLib.data import Dataset, default_data_dir
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.evaluation import evaluate_cases, summarise
from MetaRegistrationLib.network import RegistrationNet
from MetaRegistrationLib.precision import resolve_precision

from .config import TrainConfig
from .episodes import EpisodeSampler
from .reptile import conventional_optimizer, train_episode
from .run_folder import ResumePoint, RunFolder, git_commit, hardware

TORCH_SEED_STRIDE = 1_000_003
"""Episode ``e`` of a run with seed ``s`` runs its update under ``torch.manual_seed(s * TORCH_SEED_STRIDE + e)``."""


def validate(config: TrainConfig, dataset: Dataset, case_ids: list[str], checkpoint: Path) -> dict:
    """Sweep validation of a checkpoint (the ``meta`` method at ``f_max`` frames, in the run's precision): median
    TRE (mm) and mean DSC."""
    rows = evaluate_cases(dataset, case_ids, "meta", [config.f_max], model=checkpoint, precision=config.precision)
    (summary,) = summarise(rows)
    return {"median_tre_mm": summary.median_tre_mm, "mean_dsc": summary.mean_dsc}


def split_cases(dataset: Dataset, split: str, need: str, setting: str, remedy: str = "") -> list[str]:
    """The case IDs of a split the run needs, which must not be empty.

    Raises:
        InputError: naming ``split.json`` and the split (and the setting that names it), if the split is unknown,
            malformed or empty.
    """
    case_ids = dataset.split(split)
    if not case_ids:
        raise InputError(f"{dataset.root / 'split.json'}: split {split!r} is empty; {need} ({setting})"
                         + (f", {remedy}" if remedy else ""))
    return case_ids


def train(config: TrainConfig, run: RunFolder, resume: bool = False) -> Path:
    """Run (or resume) training into ``run``; returns the stem of the trained model (``final``).

    Everything is checked (the run folder, the checkpoint and optimiser state to resume from, the data set, its
    splits and every training case) before a new run's folder is created.

    Raises:
        InputError, CheckpointError: one line naming the file at fault.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    start = run.resume_point(config) if resume else None
    if start is not None and start.episodes_done == config.episodes and run.final_is_complete():
        _notify(start)
        run.complete_finish()  # in case the run was stopped after saving final
        return run.final
    if start is None:
        torch.manual_seed(config.seed)
        model = RegistrationNet(config.network)
    else:
        model = start.model.network
    model.train()
    model.precision = resolve_precision(config.precision, torch.device("cpu"))
    optimizer = conventional_optimizer(model, config)
    if optimizer is not None and start is not None:
        run.load_optimizer_state(optimizer, start.checkpoint)
    dataset = Dataset(config.data or default_data_dir())
    if not resume:
        run.check_can_start(dataset.root)
    train_ids = split_cases(dataset, config.train_split, "training needs at least one case",
                            f"train_split: {config.train_split}")
    if config.validate_every:
        val_ids = split_cases(dataset, config.val_split, "validation needs at least one case",
                              f"val_split: {config.val_split}", "or set validate_every: 0")[: config.validate_cases]
        dataset.select(cases=val_ids)  # every validation case's files are there
    else:
        val_ids = dataset.split(config.val_split)[: config.validate_cases]  # known and well-formed; may be empty
    with tqdm(train_ids, desc="loading training cases", file=sys.stderr) as loading:
        cases = [dataset.load(case_id) for case_id in loading]
    sampler = EpisodeSampler(cases, config)
    if not resume:
        run.create(config)
    provenance = {"data": dataset.root.resolve().name, "train_split": config.train_split,
                  "train_cases": len(train_ids), "mode": config.mode, "git_commit": git_commit(),
                  "hardware": hardware(), "training_config": config.to_dict()}
    done = 0 if start is None else start.episodes_done
    elapsed = 0.0 if start is None else start.wall_seconds
    if resume:
        _notify(start)  # every check passed: the run goes on from there
        run.forget_after(done, start)
        if start is not None and config.validation_due(done) and not run.validated_at(done):
            _validate_and_log(run, config, dataset, val_ids, start.checkpoint, done)
    with tqdm(range(done, config.episodes), initial=done, total=config.episodes, desc=f"{config.mode} training",
              file=sys.stderr) as bar:
        for episode in bar:
            torch.manual_seed(config.seed * TORCH_SEED_STRIDE + episode)
            tick = time.perf_counter()
            problem, case_id = sampler.problem(episode)
            loss, beta = train_episode(model, problem, config, episode, optimizer)
            elapsed += time.perf_counter() - tick
            bar.set_postfix(loss=f"{loss:.4f}", case=case_id)
            run.log_episode({"episode": episode, "case": case_id, "loss": f"{loss:.5f}", "beta_meta": f"{beta:.5f}",
                             "wall_seconds": f"{elapsed:.1f}"})
            done = episode + 1
            if config.checkpoint_due(done):
                checkpoint = run.save_checkpoint(model, config.adaptation, {**provenance, "episodes_done": done,
                                                 "wall_seconds": round(elapsed, 1)}, done, optimizer)
            if config.validation_due(done):
                _validate_and_log(run, config, dataset, val_ids, checkpoint, done)
    return run.finish(model, config.adaptation, {**provenance, "episodes_done": config.episodes,
                                                 "wall_seconds": round(elapsed, 1)})


def _notify(start: ResumePoint | None) -> None:
    """Say which checkpoint a run resumes from, if it was found without the ``latest`` pointer (one line)."""
    if start is not None and start.notice:
        print(f"metareg-train: notice: {start.notice}", file=sys.stderr)


def _validate_and_log(run: RunFolder, config: TrainConfig, dataset: Dataset, val_ids: list[str], checkpoint: Path,
                      done: int) -> None:
    """Validate the checkpoint saved after ``done`` episodes, log it in ``val.csv`` and say it."""
    scores = validate(config, dataset, val_ids, checkpoint)
    run.log_validation({"episodes_done": done, **{key: f"{value:.4f}" for key, value in scores.items()}})
    tqdm.write(f"episode {done}: val median TRE {scores['median_tre_mm']:.2f} mm, mean DSC {scores['mean_dsc']:.3f}")
