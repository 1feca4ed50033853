"""``metareg benchmark``: time the interactions of the ``meta`` method, against a plain MONAI LocalNet step.

Interactive use needs, on two CPU cores at the TRUS grid (47 x 63 x 44 voxels),
each new frame's update within 0.5 s and its prediction within 0.2 s. The
benchmark measures the product path itself: the model is loaded as the ``meta``
method loads it, and sweeps of :data:`~MetaRegistrationLib.registration.SWEEP_FRAMES`
frames go through an :class:`~MetaRegistrationLib.adaptation.AdaptationSession`
by :func:`~MetaRegistrationLib.registration.run_sweep`, each sweep in a fresh
session. Per interaction (each frame from the second on):

- update: the preparation (initial alignment from the frames so far, network
  inputs) plus the gradient steps;
- predict: the prediction of the transform;
- interaction: the whole call.

Reported values are medians over all interactions of all timed sweeps, after
one untimed warm-up sweep that lets torch settle its allocations and kernels.

Without ``--data`` the case is the phantom of :mod:`MetaRegistrationLib.phantom`
(the real grid sizes); with it, the case is read by
:mod:`MetaRegistrationLib.data` (its errors reach the CLI as one-line messages).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import BendingEnergyLoss, DiceLoss, MultiScaleLoss
from monai.networks.blocks import Warp
from monai.networks.nets import LocalNet

from MetaRegistrationLib.adaptation import AdaptationResult, AdaptationSession
from MetaRegistrationLib.settings import AdaptationSettings
from MetaRegistrationLib.data import Case
from MetaRegistrationLib.devices import DEVICE_NAMES, torch_device
from MetaRegistrationLib.precision import PRECISIONS, resolve_precision
from MetaRegistrationLib.errors import InputError, naming_the_case
from MetaRegistrationLib.alignment import initial_alignment
from MetaRegistrationLib.geometry import warp
from MetaRegistrationLib.losses import DICE_SCALES_MM
from MetaRegistrationLib.models import BUNDLED_MODEL, load_model
from MetaRegistrationLib.network import RegistrationNet
from MetaRegistrationLib.phantom import open_case
from MetaRegistrationLib.registration import SWEEP_FRAMES, run_sweep, sweep_frames

from .config import TrainConfig, load_config
from .episodes import EpisodeSampler
from .reptile import beta_meta, reptile_step

UPDATE_BUDGET_S = 0.5
PREDICT_BUDGET_S = 0.2

REFERENCE_LEARNING_RATE = 1e-3
REFERENCE_CHANNELS = 16
REFERENCE_MULTIPLE = 16
"""The reference LocalNet's input is zero-padded to a multiple of this: it needs 2**3 for its three
down-samplings, and 16 gives the 48 x 64 x 48 its time was first quoted on."""


def time_sweeps(case: Case, network: RegistrationNet, settings: AdaptationSettings, sweeps: int, frames: int,
                device: torch.device, precision: str = "auto") -> list[AdaptationResult]:
    """The results of every interaction of ``sweeps`` timed sweeps of ``frames`` frames, after one untimed
    warm-up sweep.

    Each sweep runs in a fresh session, as the ``meta`` method registers each case.
    """
    sweep = sweep_frames(case, frames)
    results = []
    for index in range(1 + sweeps):
        session = AdaptationSession(network, case.moving_image, case.moving_labels, case.fixed_image.grid,
                                    settings=settings, device=device, precision=precision)
        interactions = list(run_sweep(session, sweep))
        if index > 0:
            results.extend(interactions)
    return results


DEFAULT_TRAINING_CONFIG = Path(__file__).resolve().parent / "configs" / "meta.yaml"
"""The bundled model's training config: what ``--training`` times by default."""


@dataclass
class TrainingTiming:
    """Wall times of timed Reptile episodes (after one untimed warm-up episode): each episode, each inner step."""

    episode_seconds: list[float]
    step_seconds: list[float]

    @property
    def episode_s(self) -> float:
        return statistics.median(self.episode_seconds)

    @property
    def step_s(self) -> float:
        return statistics.median(self.step_seconds)


def time_training(case: Case, config: TrainConfig, episodes: int, precision: str,
                  device: torch.device = torch.device("cpu"), meta_batch: int = 1) -> TrainingTiming:
    """Time ``episodes`` Reptile episodes of ``config`` on ``case`` (the training loop's sampler and update, from
    the config's seed), with the network computing in ``precision`` on ``device``, ``meta_batch`` episodes per
    Reptile step (vectorised through ``vmap`` when more than one); every call times the same episodes. An episode's
    time is its step's over ``meta_batch``."""
    sampler = EpisodeSampler([case], config, device)
    torch.manual_seed(config.seed)
    model = RegistrationNet(config.network).to(device).train()
    model.precision = precision
    timing = TrainingTiming([], [])
    for first in range(0, (1 + episodes) * meta_batch, meta_batch):
        steps: list[float] = []
        start = time.perf_counter()
        problems = [sampler.problem(episode)[0] for episode in range(first, first + meta_batch)]
        reptile_step(model, problems, config, beta_meta(config, first), steps, vectorised=meta_batch > 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if first > 0:
            timing.episode_seconds.append((time.perf_counter() - start) / meta_batch)
            timing.step_seconds.extend(step / meta_batch for step in steps)
    return timing


def run_training(args: argparse.Namespace, case: Case, device: torch.device) -> int:
    """``--training``: Reptile episodes in fp32 and in the chosen precision (and batched, with ``--meta-batch``),
    one table or one JSON object."""
    if args.episodes < 1:
        raise InputError(f"--episodes must be at least 1, got {args.episodes}")
    if args.meta_batch < 1:
        raise InputError(f"--meta-batch must be at least 1, got {args.meta_batch}")
    config = load_config(Path(args.config))
    chosen = resolve_precision(args.precision, device)
    with naming_the_case(case.case_id):
        fp32 = time_training(case, config, args.episodes, "fp32", device)
        timed = fp32 if chosen == "fp32" else time_training(case, config, args.episodes, chosen, device)
        batched = None if args.meta_batch == 1 else \
            time_training(case, config, args.episodes, chosen, device, args.meta_batch)
    result = {
        "case": case.case_id, "config": str(args.config), "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "episodes": args.episodes, "inner_steps": config.inner_steps,
        "precision": chosen,
        "fp32_episode_s": fp32.episode_s, "fp32_step_s": fp32.step_s, "fp32_episodes_per_hour": 3600 / fp32.episode_s,
        "episode_s": timed.episode_s, "step_s": timed.step_s, "episodes_per_hour": 3600 / timed.episode_s,
        "speedup": fp32.episode_s / timed.episode_s,
        "meta_batch": args.meta_batch,
        "batched_episode_s": None if batched is None else batched.episode_s,
        "batched_episodes_per_hour": None if batched is None else 3600 / batched.episode_s,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"case {case.case_id}, config {args.config} ({config.inner_steps} inner steps per episode), device "
          f"{device}, torch {torch.__version__} with {torch.get_num_threads()} threads; medians over "
          f"{args.episodes} step(s) after one warm-up step")
    print(f"{'precision':<12}{'batch':>6}{'step s':>10}{'episode s':>12}{'episodes/h':>12}")
    rows = [("fp32", 1, fp32), *([(chosen, 1, timed)] if chosen != "fp32" else []),
            *([(chosen, args.meta_batch, batched)] if batched is not None else [])]
    for name, batch, timing in rows:
        print(f"{name:<12}{batch:>6}{timing.step_s:>10.3f}{timing.episode_s:>12.3f}{3600 / timing.episode_s:>12.0f}")
    print(f"speed-up of {chosen} over fp32: {result['speedup']:.2f}x"
          + ("" if batched is None else f"; batched ({args.meta_batch} episodes per step) over fp32: "
                                        f"{fp32.episode_s / batched.episode_s:.2f}x"))
    return 0


def _median_seconds(call: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``call`` over ``repeats`` runs after ``warmup`` untimed ones."""
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels run asynchronously: wait before reading the clock
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_reference_step(case: Case, repeats: int, device: torch.device, warmup: int = 1,
                        num_channel_initial: int = REFERENCE_CHANNELS) -> float:
    """Median seconds of one training step of plain MONAI LocalNet on the case at full resolution.

    The setting quoted before this project's network was designed: the fixed
    image and the MR aligned by field-of-view centres as two channels,
    zero-padded to a multiple of 16 (48 x 64 x 48 for this data),
    ``MultiScaleLoss(DiceLoss)`` on the gland over the same scales (in voxels, as
    MONAI takes them) plus ``BendingEnergyLoss``, and an Adam step.
    """
    def tensor(array) -> torch.Tensor:
        return torch.as_tensor(array[:1], dtype=torch.float32, device=device)[None]

    fixed_grid, moving_grid = case.fixed_image.grid, case.moving_image.grid
    initial = torch.as_tensor(initial_alignment("fov-centre", fixed_grid, moving_grid), dtype=torch.float32,
                              device=device)
    torch.manual_seed(0)
    net = LocalNet(spatial_dims=3, in_channels=2, num_channel_initial=num_channel_initial,
                   extract_levels=(0, 1, 2, 3)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=REFERENCE_LEARNING_RATE)
    moving = torch.cat([tensor(case.moving_image.array), tensor(case.moving_labels.array)], dim=1)
    moving_on_fixed = warp(moving, moving_grid, fixed_grid, initial)
    padding = [amount for n in reversed(fixed_grid.array_shape) for amount in (0, -n % REFERENCE_MULTIPLE)]
    images = F.pad(torch.cat([tensor(case.fixed_image.array), moving_on_fixed[:, :1]], dim=1) / 255.0, padding)
    moving_gland = F.pad(moving_on_fixed[:, 1:], padding)
    fixed_gland = F.pad(tensor(case.fixed_labels.array), padding)
    label_loss = MultiScaleLoss(DiceLoss(), scales=list(DICE_SCALES_MM))
    bending = BendingEnergyLoss()
    with warnings.catch_warnings():
        # MONAI's notes on its own internals (native grid_sample, indexing deprecations): nothing a user can act on.
        warnings.simplefilter("ignore", UserWarning)
        warper = Warp()

        def step() -> None:
            ddf = net(images)
            loss = label_loss(fixed_gland, warper(moving_gland, ddf)) + bending(ddf)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return _median_seconds(step, repeats, warmup, device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``benchmark`` options to ``parser``."""
    parser.add_argument("--data", metavar="DIR", help="data set folder; without it the built-in phantom case "
                        "(the real grid sizes) is used")
    parser.add_argument("--case", metavar="ID", help="case of --data to time (default: its first case)")
    parser.add_argument("--model", metavar="FILE", help="model to time (either file of the pair, or their stem; "
                        "default: the bundled model)")
    parser.add_argument("--sweeps", type=int, default=3, metavar="N",
                        help=f"timed sweeps of {SWEEP_FRAMES} frames, after one warm-up sweep (default: 3)")
    parser.add_argument("--reference-repeats", type=int, default=3, metavar="N",
                        help="timed steps of the plain MONAI LocalNet reference, after one warm-up "
                             "(default: 3; 0 skips it)")
    parser.add_argument("--device", default="cpu", help=f"where to run: {', '.join(DEVICE_NAMES)} or cuda:N "
                        "(default: cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the network's arithmetic (default: %(default)s: bf16 where the hardware has it)")
    parser.add_argument("--training", action="store_true",
                        help="time Reptile training episodes instead (fp32 and --precision, the same episodes)")
    parser.add_argument("--config", default=str(DEFAULT_TRAINING_CONFIG),
                        help="training config for --training (default: the bundled model's, Training/configs/meta.yaml)")
    parser.add_argument("--episodes", type=int, default=5, metavar="N",
                        help="timed episodes for --training, after one warm-up episode (default: 5)")
    parser.add_argument("--meta-batch", type=int, default=1, metavar="B",
                        help="with --training, also time B episodes per batched (vectorised) Reptile step")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed ``args``; prints a table or one JSON object; returns 0."""
    if args.sweeps < 1:
        raise InputError(f"--sweeps must be at least 1, got {args.sweeps}")
    if args.reference_repeats < 0:
        raise InputError(f"--reference-repeats must be 0 or more, got {args.reference_repeats}")
    if args.case is not None and args.data is None:
        raise InputError("--case needs --data")
    try:
        device = torch_device(args.device)
    except InputError as error:
        raise InputError(f"--device: {error}") from None
    precision = resolve_precision(args.precision, device)  # before any file is read
    if args.training:
        return run_training(args, open_case(args.data, args.case), device)
    network, settings, _ = load_model(args.model)
    model_name = str(BUNDLED_MODEL if args.model is None else args.model)
    case = open_case(args.data, args.case)
    with naming_the_case(case.case_id):
        results = time_sweeps(case, network, settings, args.sweeps, SWEEP_FRAMES, device, precision)
    updates = [r.preparation_seconds + sum(r.update_seconds) for r in results]
    steps = [seconds for r in results for seconds in r.update_seconds]
    reference_s = time_reference_step(case, args.reference_repeats, device) if args.reference_repeats else None
    result = {
        "case": case.case_id,
        "model": model_name,
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fixed_shape_kji": list(case.fixed_image.grid.array_shape),
        "sweeps": args.sweeps,
        "frames_per_sweep": SWEEP_FRAMES,
        "interactions": len(results),
        "updates_per_interaction": settings.updates_per_interaction,
        "reference_repeats": args.reference_repeats,
        "update_median_s": _median(updates),
        "predict_median_s": _median([r.predict_seconds for r in results]),
        "interaction_median_s": _median([r.seconds for r in results]),
        "preparation_median_s": _median([r.preparation_seconds for r in results]),
        "step_median_s": _median(steps),
        "reference_step_median_s": reference_s,
        "update_budget_s": UPDATE_BUDGET_S,
        "predict_budget_s": PREDICT_BUDGET_S,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"case {case.case_id}, fixed grid (k, j, i) = {case.fixed_image.grid.array_shape}, device {device} ({precision}), "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, model {model_name}")
    print(f"{args.sweeps} sweep(s) of {SWEEP_FRAMES} frames after one warm-up sweep; update = preparation "
          f"(alignment, inputs) + {settings.updates_per_interaction} gradient step(s)")
    print(f"{'step':<16}{'median s':>10}{'budget s':>10}{'count':>7}")
    rows = [("update", result["update_median_s"], f"{UPDATE_BUDGET_S:g}", len(results)),
            ("predict", result["predict_median_s"], f"{PREDICT_BUDGET_S:g}", len(results)),
            ("interaction", result["interaction_median_s"], "-", len(results))]
    if reference_s is not None:
        rows.append(("reference_step", reference_s, "-", args.reference_repeats))
    for name, seconds, budget, count in rows:
        print(f"{name:<16}{seconds:>10.3f}{budget:>10}{count:>7}")
    return 0
