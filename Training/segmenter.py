"""``metareg-train segmenter``: train the 2D TRUS frame segmenter (:mod:`MetaRegistrationLib.frame_segmenter`).

Training frames are planes cut from the training split's TRUS volumes with their gland labels, as a tracked
probe would see them: a sagittal plane anywhere across the gland (and a few planes beyond its edges, where the
answer is "no gland"), tilted by up to ``tilt_degrees`` about the probe and depth axes (a freehand radial sweep is
not axis-aligned), then augmented as TRUS varies between patients and scanners (:func:`augment`): gain and gamma,
multiplicative speckle, acoustic shadows behind a random strip, small in-plane rotations and shifts.

The training cases are split once, by a rule fixed before any run, into a fitting part and an inner fold of
``INNER_FOLD_CASES`` cases (whole patients: cases that share an MR stay together; the fold is the patients whose
first case ID sorts last). The inner fold's Dice on the planes of a 10-frame sweep chooses the epoch to keep
(``best``); val is not looked at here (``metareg segmenter`` reports it).

Run folder: ``log.csv`` (one row per epoch), ``latest`` (weights, card and ``latest-optimizer.pt``, every epoch,
crash-safe), ``best`` (the epoch with the highest inner-fold Dice). ``--resume`` continues from ``latest``; an epoch
is seeded from (seed, epoch), so a resumed run draws what an uninterrupted one would. ``--bundle OUT`` writes the
run's ``best`` as a model with its card (e.g. ``MetaRegistrationLib/bundled_models/frame-segmenter``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from MetaRegistrationLib.data import Case, Dataset
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.files import atomic_path
from MetaRegistrationLib.frame_segmenter import (FrameSegmenter, SegmenterConfig, SegmenterNet, frame_logits,
                                                 load_frame_segmenter, normalise_intensity, save_frame_segmenter)
from MetaRegistrationLib.geometry import apply_affine
from MetaRegistrationLib.metrics import dice
from MetaRegistrationLib.sweep import (DEPTH_AXIS, PROBE_AXIS, gland_extent, plane_pose, sample_frame,
                                       sagittal_pose, sweep_positions)

INNER_FOLD_CASES = 12
"""About this many training cases (whole patients) are kept out of fitting to choose the epoch."""
SWEEP_FRAMES = 10


@dataclass(frozen=True)
class SegmenterTraining:
    """The segmenter's training settings (written to the card's provenance)."""

    epochs: int = 40
    frames_per_epoch: int = 2048
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    beyond_edge_planes: int = 3
    tilt_degrees: float = 6.0
    rotate_degrees: float = 10.0
    shift_pixels: float = 3.0
    edge_share: float = 0.0
    """Share of planes drawn from the outer ``EDGE_PLANES`` planes of each side of the gland (where a 2D segmenter
    fails first); the rest are drawn uniformly."""


EDGE_PLANES = 3


def patient_groups(cases: dict[str, Case]) -> list[list[str]]:
    """Case IDs grouped by patient: cases whose MR volumes are identical belong to one patient (data README)."""
    groups: dict[str, list[str]] = {}
    for case_id, case in cases.items():
        key = hashlib.sha256(np.ascontiguousarray(case.moving_image.array).tobytes()).hexdigest()
        groups.setdefault(key, []).append(case_id)
    return sorted(groups.values(), key=lambda group: min(group))


def inner_fold(groups: list[list[str]]) -> tuple[list[str], list[str]]:
    """(fitting cases, inner-fold cases): the patients whose first case sorts last, until about
    :data:`INNER_FOLD_CASES` cases are held."""
    held: list[str] = []
    for group in reversed(groups):
        if len(held) >= INNER_FOLD_CASES:
            break
        held += group
    fitting = [case for group in groups for case in group if case not in held]
    return fitting, sorted(held)


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """The 3x3 rotation by ``degrees`` about ``axis``."""
    return Rotation.from_rotvec(math.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()


def random_plane(case: Case, rng: np.random.Generator, settings: SegmenterTraining):
    """A random tracked frame of a case: (image, gland), each (V, U) = (k, i) pixels of the volume's spacing."""
    grid = case.fixed_image.grid
    gland = case.fixed_labels.array[0]
    low, high = gland_extent(gland)
    margin = settings.beyond_edge_planes
    if rng.random() < settings.edge_share:
        side = int(rng.integers(2))
        offset = int(rng.integers(EDGE_PLANES))
        position = low + offset if side == 0 else high - offset
    else:
        position = int(rng.integers(max(0, low - margin), min(grid.size[1] - 1, high + margin) + 1))
    pose = sagittal_pose(grid, position)
    shape = (grid.size[PROBE_AXIS], grid.size[DEPTH_AXIS])
    centre = apply_affine(pose, [(shape[1] - 1) / 2, (shape[0] - 1) / 2, 0.0])
    rotation = np.eye(3)
    for axis in (pose[:3, 0], pose[:3, 1]):  # tilt about the depth and the probe axes
        rotation = _rotation(axis, rng.uniform(-settings.tilt_degrees, settings.tilt_degrees)) @ rotation
    u_step, v_step = rotation @ pose[:3, 0], rotation @ pose[:3, 1]
    origin = centre - u_step * (shape[1] - 1) / 2 - v_step * (shape[0] - 1) / 2
    frame = sample_frame(case.fixed_image, gland, plane_pose(origin, u_step, v_step), shape)
    return frame.image, (frame.gland > 0.5).astype(np.float32)


def augment(image: np.ndarray, gland: np.ndarray, rng: np.random.Generator, settings: SegmenterTraining
            ) -> tuple[np.ndarray, np.ndarray]:
    """TRUS-like variation of one frame (V, U); returns the normalised image and the gland, both float32.

    Gain (x0.6-1.5) and gamma (0.7-1.4); speckle: multiplicative Gamma noise of 2-10 looks on 70 % of frames;
    an acoustic shadow on 30 %: the pixels beyond a random strip of rows, away from the probe (lower u, the
    probe being at high u), darkened to 20-60 %; then an in-plane rotation and shift (bilinear image, nearest
    label).
    """
    image = image.astype(np.float32) * rng.uniform(0.6, 1.5)
    peak = max(float(image.max()), 1e-6)
    image = peak * (image / peak) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.7:
        looks = rng.uniform(2.0, 10.0)
        image = image * rng.gamma(looks, 1.0 / looks, size=image.shape).astype(np.float32)
    if rng.random() < 0.3:
        rows, columns = image.shape
        width = int(rng.integers(3, max(4, rows // 3)))
        start = int(rng.integers(0, rows - width + 1))
        depth = int(rng.integers(columns // 3, columns))
        image[start:start + width, :depth] *= rng.uniform(0.2, 0.6)
    tensor = torch.from_numpy(np.stack([normalise_intensity(image), gland]))[:, None]
    angle = math.radians(rng.uniform(-settings.rotate_degrees, settings.rotate_degrees))
    rows, columns = image.shape
    shift = rng.uniform(-settings.shift_pixels, settings.shift_pixels, size=2) * 2 / np.array([columns, rows])
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), shift[0]],
                          [math.sin(angle), math.cos(angle), shift[1]]], dtype=torch.float32)[None].expand(2, 2, 3)
    grid = F.affine_grid(theta, list(tensor.shape), align_corners=False)
    moved_image = F.grid_sample(tensor[:1], grid[:1], mode="bilinear", padding_mode="border", align_corners=False)
    moved_gland = F.grid_sample(tensor[1:], grid[1:], mode="nearest", padding_mode="zeros", align_corners=False)
    return moved_image[0, 0].numpy(), moved_gland[0, 0].numpy()


def sweep_planes(case: Case) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (image, gland) pixels of the planes a 10-frame sweep acquires (evaluation's frames)."""
    gland = case.fixed_labels.array[0]
    return [(case.fixed_image.array[0][:, j, :], (gland[:, j, :] > 0.5).astype(np.float32))
            for j in sweep_positions(gland, SWEEP_FRAMES)]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)(logits, target)


def _save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(optimizer.state_dict(), temporary)


def train_segmenter(data: Path, run: Path, resume: bool, settings: SegmenterTraining, time_limit_s: float | None,
                    config: SegmenterConfig = SegmenterConfig()) -> Path:
    """Train (or continue) a segmenter run; returns the ``best`` stem."""
    dataset = Dataset(data)
    cases = {case_id: dataset.load(case_id) for case_id in dataset.select("train")}  # read once
    fitting, held = inner_fold(patient_groups(cases))
    log_path, latest, best = run / "log.csv", run / "latest", run / "best"
    loaded = None
    if resume:
        if not (latest.with_suffix(".json")).is_file():
            raise InputError(f"{run}: no latest checkpoint to resume from")
        loaded = load_frame_segmenter(latest)  # a resumed run continues with its own settings and architecture
        saved = SegmenterTraining(**loaded.card["provenance"]["training"])
        if (saved, loaded.config) != (settings, config):
            print(f"notice: {run} resumes with its own settings ({asdict(saved)}, {asdict(loaded.config)}); the "
                  "options given differ and are not used", flush=True)
        settings, config = saved, loaded.config
    torch.manual_seed(settings.seed)
    network = SegmenterNet(config)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    start_epoch, best_dice = 0, -1.0
    if loaded is not None:
        network.load_state_dict(loaded.network.state_dict())
        optimizer.load_state_dict(torch.load(run / "latest-optimizer.pt", weights_only=True))
        start_epoch = loaded.card["provenance"]["epochs_done"]
        best_dice = loaded.card["provenance"]["best_inner_dice"]
    elif run.exists() and any(run.iterdir()):
        raise InputError(f"{run}: the run folder is not empty; use --resume to continue it")
    run.mkdir(parents=True, exist_ok=True)
    fitting_cases = [cases[case_id] for case_id in fitting]
    held_planes = [plane for case_id in held for plane in sweep_planes(cases[case_id])]
    provenance = {"data": str(data), "split": "train", "fitting_cases": fitting, "inner_fold_cases": held,
                  "training": asdict(settings)}
    started = time.monotonic()
    steps_per_epoch = settings.frames_per_epoch // settings.batch_size
    total_steps = settings.epochs * steps_per_epoch
    for epoch in range(start_epoch, settings.epochs):
        rng = np.random.default_rng([settings.seed, epoch])
        network.train()
        losses = []
        for step in range(steps_per_epoch):
            for group in optimizer.param_groups:  # cosine decay over the whole run
                done = epoch * steps_per_epoch + step
                group["lr"] = settings.learning_rate * 0.5 * (1 + math.cos(math.pi * done / total_steps))
            pairs = [augment(*random_plane(fitting_cases[int(rng.integers(len(fitting_cases)))], rng, settings),
                             rng, settings) for _ in range(settings.batch_size)]
            images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
            glands = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
            loss = _loss(frame_logits(network, images), glands)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        segmenter = FrameSegmenter(network)
        inner_dice = float(np.mean([dice(segmenter.segment(image), gland) for image, gland in held_planes]))
        network.train()
        improved = inner_dice > best_dice
        best_dice = max(best_dice, inner_dice)
        record = {**provenance, "epochs_done": epoch + 1, "best_inner_dice": best_dice,
                  "inner_dice": inner_dice}
        if improved:
            save_frame_segmenter(best, network, record)
        _save_optimizer(optimizer, run / "latest-optimizer.pt")
        save_frame_segmenter(latest, network, record)
        row = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 5), "inner_dice": round(inner_dice, 4),
               "best": improved, "wall_seconds": round(time.monotonic() - started, 1)}
        new_log = not log_path.exists()
        with log_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new_log:
                writer.writeheader()
            writer.writerow(row)
        print(json.dumps(row), flush=True)
        if time_limit_s is not None and time.monotonic() - started > time_limit_s:
            print(f"time limit reached after epoch {epoch + 1}; continue with --resume", flush=True)
            break
    return best


def bundle_segmenter(run: Path, out: Path, version: str) -> dict:
    """Write a run's ``best`` as a model with its card; returns the card's provenance."""
    segmenter = load_frame_segmenter(run / "best")
    provenance = dict(segmenter.card["provenance"])
    save_frame_segmenter(out, segmenter.network, provenance, {
        "name": "TRUS frame prostate segmenter", "version": version, "license": "Apache-2.0",
        "intended_use": "the prostate gland on one sagittal (or near-sagittal) 2D TRUS frame, when no frame "
                        "segmentation is given; research use, not a medical device",
        "inputs": {"image": "(V, U) pixels of one frame, any intensity units (scaled per frame), resampled to "
                            f"{segmenter.config.pixel_mm} mm pixels"},
        "outputs": {"gland": "(V, U) 0/1 mask: probability > 0.5, largest connected region"},
        "evaluation": "docs/RESULTS.md, 'The frame segmenter' (metareg segmenter)"})
    return provenance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="run folder")
    parser.add_argument("--data", type=Path, default=None, help="data set folder (default: ../shared/data/mrus-prostate)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--epochs", type=int, default=SegmenterTraining.epochs, help="epochs (default: %(default)s)")
    parser.add_argument("--time-limit", type=float, metavar="MINUTES", help="stop after this many minutes")
    parser.add_argument("--features", type=_features, default=SegmenterConfig.features,
                        help="BasicUNet feature counts, six comma-separated (default: %(default)s)")
    parser.add_argument("--edge-share", type=float, default=SegmenterTraining.edge_share,
                        help="share of training planes drawn at the gland's edges (default: %(default)s)")
    parser.add_argument("--dropout", type=float, default=SegmenterConfig.dropout,
                        help="dropout in the network while training (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=SegmenterTraining.weight_decay,
                        help="AdamW weight decay (default: %(default)s)")
    parser.add_argument("--rotate-degrees", type=float, default=SegmenterTraining.rotate_degrees,
                        help="largest in-plane rotation of the augmentation (default: %(default)s)")
    parser.add_argument("--bundle", type=Path, metavar="OUT", help="write the run's best checkpoint as a model and stop")
    parser.add_argument("--version", default="1.0.0", help="the bundled model's version (default: %(default)s)")


def _features(text: str) -> tuple[int, ...]:
    try:
        features = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected six comma-separated integers, got {text!r}") from None
    if len(features) != 6 or min(features) < 1:
        raise argparse.ArgumentTypeError(f"expected six positive feature counts, got {text!r}")
    return features


def run(args: argparse.Namespace) -> int:
    from MetaRegistrationLib.data import default_data_dir

    if args.bundle is not None:
        provenance = bundle_segmenter(args.run, args.bundle, args.version)
        print(f"wrote {args.bundle}.safetensors and {args.bundle}.json (inner-fold Dice "
              f"{provenance['best_inner_dice']:.3f} after {provenance['epochs_done']} epochs)")
        return 0
    if args.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {args.epochs}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    best = train_segmenter(args.data or default_data_dir(), args.run, args.resume,
                           SegmenterTraining(epochs=args.epochs, edge_share=args.edge_share,
                                             weight_decay=args.weight_decay, rotate_degrees=args.rotate_degrees),
                           None if args.time_limit is None else args.time_limit * 60,
                           SegmenterConfig(features=args.features, dropout=args.dropout))
    print(f"best checkpoint: {best}.safetensors + {best}.json")
    return 0
