"""The training loop: episodes from :mod:`.episodes`, updates from :mod:`.reptile`, files in a :class:`RunFolder`.

Every episode is seeded from (seed, episode) alone (NumPy for the episode's draw, torch for the update), so a
resumed run draws and trains the same episodes as an uninterrupted one and ends with the same weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from MetaRegistrationLib.adaptation import adaptation_step
from MetaRegistrationLib.data import Dataset, default_data_dir
from MetaRegistrationLib.devices import torch_device
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.evaluation import evaluate_cases, summarise
from MetaRegistrationLib.network import RegistrationNet
from MetaRegistrationLib.precision import resolve_precision

from .config import TrainConfig
from .distributed import World, join, leave
from .episodes import EpisodeSampler
from .reptile import adapted_weight_sum, apply_reptile_step, beta_meta, conventional_optimizer
from .run_folder import ResumePoint, RunFolder, git_commit, hardware

TORCH_SEED_STRIDE = 1_000_003
"""Episode ``e`` of a run with seed ``s`` runs its update under ``torch.manual_seed(s * TORCH_SEED_STRIDE + e)``."""


def validate(config: TrainConfig, dataset: Dataset, case_ids: list[str], checkpoint: Path,
             device: str | torch.device = "cpu") -> dict:
    """Sweep validation of a checkpoint (the ``meta`` method at ``f_max`` frames, in the run's precision, on
    ``device``): median TRE (mm) and mean DSC."""
    rows = evaluate_cases(dataset, case_ids, "meta", [config.f_max], model=checkpoint, precision=config.precision,
                          device=device)
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


def train(config: TrainConfig, run: RunFolder, resume: bool = False, device: str | torch.device = "cpu",
          time_limit_s: float | None = None) -> Path | None:
    """Run (or resume) training into ``run``; returns the stem of the trained model (``final``), or ``None`` if the
    run stopped at ``time_limit_s`` (seconds of this call) after checkpointing, to be resumed.

    Everything is checked (the run folder, the checkpoint and optimiser state to resume from, the data set, its
    splits and every training case) before a new run's folder is created. Under ``torchrun`` (:mod:`.distributed`)
    rank 0 does the checks and the files, and the ranks share each batch of episodes.

    Args:
        device: where the network trains (:func:`~MetaRegistrationLib.devices.torch_device`: ``cpu``, ``cuda``,
            ``auto``); validation runs there too.

    Raises:
        InputError, CheckpointError: one line naming the file at fault.
    """
    clock_start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch_device(device)
    world = join(device)
    try:
        return _train(config, run, resume, world.device(device), world, clock_start, time_limit_s)
    finally:
        leave(world)


def _train(config: TrainConfig, run: RunFolder, resume: bool, device: torch.device, world: World,
           clock_start: float, time_limit_s: float | None) -> Path | None:
    if world.size > 1 and config.mode != "meta":
        raise InputError(f"torchrun with {world.size} ranks trains in meta mode only (batched Reptile); train the "
                         f"{config.mode} baseline in one process")
    if config.meta_batch % world.size:
        raise InputError(f"meta_batch ({config.meta_batch}) must be a multiple of the {world.size} ranks, which "
                         "share each batch of episodes")
    start = run.resume_point(config) if resume and world.main else None
    if world.from_main(start is not None and start.episodes_done == config.episodes and run.final_is_complete()):
        if world.main:
            _notify(start)
            run.complete_finish()  # in case the run was stopped after saving final
        return run.final
    if start is None:
        torch.manual_seed(config.seed)
        model = RegistrationNet(config.network)
    else:
        model = start.model.network
    model.to(device).train()
    world.weights_from_main(model)
    model.precision = resolve_precision(config.precision, device)
    optimizer = conventional_optimizer(model, config)
    if optimizer is not None and start is not None:
        run.load_optimizer_state(optimizer, start.checkpoint)
    dataset = Dataset(config.data or default_data_dir())
    if not resume and world.main:
        run.check_can_start(dataset.root)
    train_ids = split_cases(dataset, config.train_split, "training needs at least one case",
                            f"train_split: {config.train_split}")
    if config.validate_every:
        val_ids = split_cases(dataset, config.val_split, "validation needs at least one case",
                              f"val_split: {config.val_split}", "or set validate_every: 0")[: config.validate_cases]
        dataset.select(cases=val_ids)  # every validation case's files are there
    else:
        val_ids = dataset.split(config.val_split)[: config.validate_cases]  # known and well-formed; may be empty
    with tqdm(train_ids, desc="loading training cases", file=sys.stderr, disable=not world.main) as loading:
        cases = [dataset.load(case_id) for case_id in loading]
    sampler = EpisodeSampler(cases, config, device)
    if not resume and world.main:
        run.create(config)
    provenance = {"data": dataset.root.resolve().name, "train_split": config.train_split,
                  "train_cases": len(train_ids), "mode": config.mode, "git_commit": git_commit(),
                  "hardware": hardware(device, world.size), "training_config": config.to_dict()}
    done, elapsed = world.from_main((0, 0.0) if start is None else (start.episodes_done, start.wall_seconds))
    if resume and world.main:
        _notify(start)  # every check passed: the run goes on from there
        run.forget_after(done, start)
        if start is not None and config.validation_due(done) and not run.validated_at(done):
            _validate_and_log(run, config, dataset, val_ids, start.checkpoint, done, device)
    checkpoint, stop = None, False
    with tqdm(range(done, config.episodes), initial=done, total=config.episodes, desc=f"{config.mode} training",
              file=sys.stderr, disable=not world.main) as bar:
        for first in range(done, config.episodes, config.meta_batch):
            torch.manual_seed(config.seed * TORCH_SEED_STRIDE + first)
            tick = time.perf_counter()
            mine = world.share(first, config.meta_batch)
            drawn = [sampler.problem(episode) for episode in mine]
            problems = [problem for problem, _ in drawn]
            if optimizer is None:
                beta = beta_meta(config, first)
                weight_sum, losses = adapted_weight_sum(model, problems, config)
                world.sum(weight_sum)
                apply_reptile_step(model, weight_sum, config.meta_batch, beta)
            else:
                beta, losses = float("nan"), [adaptation_step(model, optimizer, problems[0], config.adaptation)]
            elapsed += time.perf_counter() - tick
            rows = [row for rank_rows in world.gather(list(zip(mine, [case_id for _, case_id in drawn], losses)))
                    for row in rank_rows]
            done = first + config.meta_batch
            stop = time_limit_s is not None and world.from_main(time.perf_counter() - clock_start > time_limit_s)
            bar.update(config.meta_batch)
            if world.main:
                for episode, case_id, loss in rows:
                    run.log_episode({"episode": episode, "case": case_id, "loss": f"{loss:.5f}",
                                     "beta_meta": f"{beta:.5f}", "wall_seconds": f"{elapsed:.1f}"})
                bar.set_postfix(loss=f"{np.mean(losses):.4f}", case=rows[-1][1])
                if config.checkpoint_due(done) or stop:
                    checkpoint = run.save_checkpoint(model, config.adaptation, {**provenance, "episodes_done": done,
                                                     "wall_seconds": round(elapsed, 1)}, done, optimizer)
                if config.validation_due(done):
                    _validate_and_log(run, config, dataset, val_ids, checkpoint, done, device)
            if stop:
                break
    if world.size > 1:
        world.from_main(None)  # the other ranks wait here while rank 0 validates and saves
    if stop and done < config.episodes:
        if world.main:
            tqdm.write(f"metareg-train: stopped at the time limit after {done} of {config.episodes} episodes; "
                       f"resume with: {run.resume_command()}", file=sys.stderr)
        return None
    if not world.main:
        return run.final
    return run.finish(model, config.adaptation, {**provenance, "episodes_done": config.episodes,
                                                 "wall_seconds": round(elapsed, 1)})


def _notify(start: ResumePoint | None) -> None:
    """Say which checkpoint a run resumes from, if it was found without the ``latest`` pointer (one line)."""
    if start is not None and start.notice:
        print(f"metareg-train: notice: {start.notice}", file=sys.stderr)


def _validate_and_log(run: RunFolder, config: TrainConfig, dataset: Dataset, val_ids: list[str], checkpoint: Path,
                      done: int, device: torch.device) -> None:
    """Validate the checkpoint saved after ``done`` episodes, log it in ``val.csv`` and say it."""
    scores = validate(config, dataset, val_ids, checkpoint, device)
    run.log_validation({"episodes_done": done, **{key: f"{value:.4f}" for key, value in scores.items()}})
    tqdm.write(f"episode {done}: val median TRE {scores['median_tre_mm']:.2f} mm, mean DSC {scores['mean_dsc']:.3f}")
