"""Initial alignment from what a live sweep has shown so far: the acquired frames' gland labels.

``initial_alignment("centroid")`` (the whole-volume alignments, at the end) needs the whole TRUS gland, which an
interactive sweep does not have until it ends; the centroid of the gland pixels
acquired so far is biased towards the part already swept. This module finds the
translation that best overlays the MR gland on the acquired gland pixels instead:
a small exhaustive search of translations, scored by soft Dice on the acquired
voxels only: first along the sweep axis alone (where the partial centroid is
wrong by up to half a gland), then locally in 3D.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .geometry import Grid, sample, translation, weighted_centroid
from .sweep import LEFT_RIGHT_AXIS

ALIGNMENT_METHODS = ("identity", "fov-centre", "centroid")
"""Initial alignments a caller can name; a 4x4 matrix can be given instead."""

SWEEP_SEARCH_MM = 24.0
"""Half range of the first search, along the sweep (left-right) axis: about half a gland's width."""
SWEEP_STEP_MM = 3.0
LOCAL_SEARCH_MM = 3.0
"""Half range of the second search, on all three axes around the first one's best."""
LOCAL_STEP_MM = 1.5
MAX_POINTS = 4_000
"""Acquired voxels scored per candidate; more are subsampled evenly (keeps many frames cheap)."""
MARGIN_MM = 12.0
"""Only acquired voxels within this distance of the acquired gland's bounding box are scored."""


def _soft_dice(sampled: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice per candidate: ``sampled`` (N, P) against ``target`` (P,)."""
    return 2 * (sampled * target).sum(-1) / (sampled.sum(-1) + target.sum() + 1e-6)


def frames_gland_alignment(moving_gland: np.ndarray, moving_grid: Grid, acquired_gland: np.ndarray,
                           acquired_mask: np.ndarray, fixed_grid: Grid) -> np.ndarray:
    """The fixed-world -> moving-world translation (4x4) that best overlays the MR gland on the acquired frames.

    Args:
        moving_gland: (k, j, i) MR gland label on ``moving_grid``.
        acquired_gland: (k, j, i) TRUS gland label on ``fixed_grid``, valid where ``acquired_mask`` is 1.
        acquired_mask: (k, j, i) 1 on voxels covered by acquired frames, 0 elsewhere.

    Raises:
        InputError: if the acquired frames hold no gland pixel.
    """
    gland_voxels = np.argwhere((acquired_gland > 0.5) & (acquired_mask > 0))
    if gland_voxels.size == 0:
        raise InputError("the acquired TRUS frames hold no gland pixel: cannot align the MR gland to them")
    start = weighted_centroid(moving_gland, moving_grid) - weighted_centroid(acquired_gland * acquired_mask, fixed_grid)
    # Far from the gland both labels are 0 for every candidate: scoring those voxels buys nothing.
    margin = np.ceil(MARGIN_MM / np.asarray(fixed_grid.spacing[::-1])).astype(int)
    low, high = np.maximum(gland_voxels.min(0) - margin, 0), gland_voxels.max(0) + margin
    near = np.zeros(acquired_mask.shape, dtype=bool)
    near[low[0]:high[0] + 1, low[1]:high[1] + 1, low[2]:high[2] + 1] = True
    covered = np.flatnonzero((acquired_mask > 0) & near)
    if covered.size > MAX_POINTS:
        covered = covered[:: -(-covered.size // MAX_POINTS)]
    points = torch.as_tensor(fixed_grid.world_points().reshape(-1, 3)[covered], dtype=torch.float32)
    target = torch.as_tensor(acquired_gland.ravel()[covered], dtype=torch.float32)
    volume = torch.as_tensor(moving_gland, dtype=torch.float32)[None, None]
    world_to_index = torch.as_tensor(moving_grid.world_to_index)
    sweep_axis = fixed_grid.index_to_world[:3, LEFT_RIGHT_AXIS]
    sweep_axis = sweep_axis / np.linalg.norm(sweep_axis)
    # Two unit vectors across the sweep complete an orthonormal basis.
    across = np.linalg.svd(sweep_axis[None])[2][1:]
    basis = np.vstack([sweep_axis, across])  # rows: sweep, across, across

    def best(centre: np.ndarray, half_ranges: tuple[float, float, float], step: float) -> np.ndarray:
        axes = [np.arange(-h, h + 1e-9, step) for h in half_ranges]
        offsets = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3) @ basis
        candidates = torch.as_tensor(centre + offsets, dtype=torch.float32)  # (N, 3) translations
        moved = (points[None] + candidates[:, None]).reshape(1, -1, 3)
        sampled = sample(volume, world_to_index, moved)[0, 0].reshape(len(candidates), -1)
        return candidates[int(torch.argmax(_soft_dice(sampled, target)))].double().numpy()

    along_sweep = best(start, (SWEEP_SEARCH_MM, 0.0, 0.0), SWEEP_STEP_MM)
    return translation(best(along_sweep, (LOCAL_SEARCH_MM,) * 3, LOCAL_STEP_MM))


def initial_alignment(
    method: str | np.ndarray,
    fixed_grid: Grid,
    moving_grid: Grid,
    fixed_gland: np.ndarray | None = None,
    moving_gland: np.ndarray | None = None,
) -> np.ndarray:
    """The initial fixed-world -> moving-world alignment ``A`` as a 4x4 matrix.

    Args:
        method: ``"identity"`` (world coordinates as stored), ``"fov-centre"``
            (translate the fixed field-of-view centre onto the moving one),
            ``"centroid"`` (translate the fixed gland centroid onto the moving one),
            or a 4x4 matrix from fixed world to moving world (LPS, mm).
        fixed_gland, moving_gland: gland label volumes (k, j, i) on their grids,
            needed for ``"centroid"``. The fixed gland may be partial (e.g. only
            the TRUS frames acquired so far): the caller decides what is known.
    """
    if not isinstance(method, str):
        matrix = np.asarray(method, dtype=float)
        if matrix.shape != (4, 4) or not np.allclose(matrix[3], [0, 0, 0, 1]):
            raise InputError(f"the initial transform must be a 4x4 affine matrix, got shape {matrix.shape}")
        return matrix
    if method == "identity":
        return np.eye(4)
    if method == "fov-centre":
        return translation(moving_grid.fov_centre() - fixed_grid.fov_centre())
    if method == "centroid":
        if fixed_gland is None or moving_gland is None:
            raise InputError("centroid alignment needs both the fixed and the moving gland labels")
        return translation(weighted_centroid(moving_gland, moving_grid) - weighted_centroid(fixed_gland, fixed_grid))
    raise InputError(f"unknown initial alignment {method!r}; choose one of {', '.join(ALIGNMENT_METHODS)} or give a 4x4 matrix")
