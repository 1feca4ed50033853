"""Training episodes: a training case, a randomly augmented MR pose and a random set of sagittal TRUS frames.

Episode ``e`` of a run is drawn from a NumPy generator seeded with ``(seed, e)`` alone, so it is the same whether
the run went through without a break or was resumed just before it.
"""

from __future__ import annotations

import numpy as np
import torch

from MetaRegistrationLib.adaptation import RegistrationProblem, build_problem
from MetaRegistrationLib.alignment import frames_gland_alignment
from MetaRegistrationLib.data import Case
from MetaRegistrationLib.geometry import Grid, weighted_centroid
from MetaRegistrationLib.sweep import random_frame_positions, rasterise_positions

from .config import AugmentationConfig, TrainConfig


def _batched(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A (C, k, j, i) array as a float32 tensor (1, C, k, j, i) on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(array)[None], dtype=torch.float32, device=device)


def augmented_grid(grid: Grid, centre: np.ndarray, rng: np.random.Generator, config: AugmentationConfig) -> Grid:
    """``grid`` moved by a random affine (rotation, scale, translation; no flip) about ``centre`` (world mm, (3,)).

    Draws, in this order, three rotation angles (one per world axis), three scale factors and three shifts (mm).
    """
    angles = np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        plane = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[np.ix_(plane, plane)] = [[c, -s], [s, c]]
        rotation = step @ rotation
    linear = rotation @ np.diag(rng.uniform(1 - config.scale, 1 + config.scale, 3))
    offset = rng.uniform(-config.translation_mm, config.translation_mm, 3)
    index_to_world = grid.index_to_world
    matrix = linear @ index_to_world[:3, :3]
    origin = linear @ (index_to_world[:3, 3] - centre) + centre + offset
    # A Grid's direction may hold the scale: only index_to_world matters downstream.
    return Grid.from_arrays(grid.size, (1.0, 1.0, 1.0), origin, matrix)


class EpisodeSampler:
    """Draws training episodes: a case, an augmented MR pose and a random frame set, as tensors on ``device``
    (each case's volumes are moved there once)."""

    def __init__(self, cases: list[Case], config: TrainConfig, device: torch.device = torch.device("cpu")):
        self.cases = cases
        self.config = config
        self.device = device
        self._tensors = [(_batched(c.moving_image.array, device), _batched(c.moving_labels.array, device),
                          _batched(c.fixed_image.array, device), _batched(c.fixed_labels.array, device))
                         for c in cases]

    def problem(self, episode: int) -> tuple[RegistrationProblem, str]:
        """The registration problem of an episode and its case's ID, reproducible from (seed, episode).

        The network input holds the episode's frames (or the whole TRUS volume with ``full_volume_input``); the
        loss sees the case's full TRUS labels.
        """
        rng = np.random.default_rng([self.config.seed, episode])
        index = int(rng.integers(len(self.cases)))
        case = self.cases[index]
        moving_image, moving_labels, fixed_image, fixed_labels = self._tensors[index]
        fixed_gland = case.fixed_labels.array[0]
        moving_gland = case.moving_labels.array[0]
        moving_grid = augmented_grid(case.moving_image.grid, weighted_centroid(moving_gland, case.moving_image.grid),
                                     rng, self.config.augmentation)
        if self.config.full_volume_input:
            image, gland = case.fixed_image.array[0], fixed_gland
            mask = np.ones_like(gland)
        else:
            positions = random_frame_positions(fixed_gland, rng, self.config.f_min, self.config.f_max)
            image, gland, mask = rasterise_positions(case.fixed_image, fixed_gland, positions)
        initial = frames_gland_alignment(moving_gland, moving_grid, gland, mask, case.fixed_image.grid)
        as_input = lambda a: torch.as_tensor(a[None, None], device=self.device)  # noqa: E731
        # The loss sees the full labels (every channel, every voxel): the stronger
        # supervision meta-training can afford and test time cannot.
        return build_problem(moving_image, moving_labels, moving_grid, case.fixed_image.grid, initial,
                             as_input(image), as_input(gland), as_input(mask), fixed_labels, None), case.case_id
