"""Registration accuracy and regularity, in world coordinates.

Definitions (the ones the project reports everywhere):

- DSC: the MR gland resampled trilinearly onto the TRUS grid through the full
  transform ``phi``, thresholded at 0.5, against TRUS gland > 0.5.
- TRE: for each landmark channel k >= 1, ``c_f`` is the intensity-weighted centroid
  of the TRUS blob (fixed world), ``c_m`` that of the matching MR blob (moving
  world); the error is ``|phi(c_f) - c_m|`` in mm. A case's TRE is the RMS over its
  landmarks.
- Folding: % of fixed voxels where the Jacobian determinant of ``phi`` is <= 0.
- HD95: 95th percentile symmetric Hausdorff distance (mm) between the warped MR
  gland and the TRUS gland, both thresholded at 0.5.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from monai.metrics import compute_hausdorff_distance

from .data import Case, Volume
from .geometry import Grid, Transform, resample, weighted_centroid


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (any equal shapes); 1.0 when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def landmark_centroids(labels: Volume) -> np.ndarray:
    """World (LPS mm) intensity-weighted centroids of the landmark channels (1..) of a label volume, (L, 3)."""
    return np.array([weighted_centroid(channel, labels.grid) for channel in labels.array[1:]]).reshape(-1, 3)


def landmark_errors(case: Case, transform: Transform) -> np.ndarray:
    """Per-landmark errors ``|phi(c_f) - c_m|`` in mm, shape (landmark_count,)."""
    if case.landmark_count == 0:
        return np.zeros(0)
    return point_errors(transform, landmark_centroids(case.fixed_labels), landmark_centroids(case.moving_labels))


def point_errors(transform: Transform, fixed_points: np.ndarray, moving_points: np.ndarray) -> np.ndarray:
    """Errors ``|phi(p_f) - p_m|`` in mm of paired world points, (N, 3) each: the TRE of landmark blobs'
    centroids here, and of clicked landmark pairs in the Slicer module."""
    fixed_points = np.asarray(fixed_points, dtype=float).reshape(-1, 3)
    return np.linalg.norm(transform.map_points(fixed_points) - np.asarray(moving_points, dtype=float).reshape(-1, 3),
                          axis=-1)


def rms(errors: np.ndarray) -> float:
    """Root mean square of errors; NaN when there are none."""
    errors = np.asarray(errors, dtype=float)
    return float(np.sqrt(np.mean(errors**2))) if errors.size else float("nan")


def folding_percent(transform: Transform, grid: Grid) -> float:
    """% of voxels of ``grid`` where ``det(d phi / d x) <= 0`` (central differences)."""
    if transform.displacement is None:
        return 0.0 if np.linalg.det(transform.initial[:3, :3]) > 0 else 100.0
    phi = transform.map_grid(grid)  # (k, j, i, 3)
    # Derivatives along the array axes (k, j, i) are per voxel step; chain through
    # the grid's index-to-world matrix to get derivatives per mm of world motion.
    by_index = np.stack(np.gradient(phi, axis=(2, 1, 0)), axis=-1)  # d phi / d(i, j, k): (k, j, i, 3, 3)
    jacobian = by_index @ np.linalg.inv(grid.index_to_world[:3, :3])
    return float(100.0 * np.mean(np.linalg.det(jacobian) <= 0))


def hd95(a: np.ndarray, b: np.ndarray, grid: Grid) -> float:
    """95th percentile symmetric Hausdorff distance in mm between two masks (k, j, i)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if not a.any() or not b.any():
        return float("nan")
    # Array axes are (k, j, i), so the spacing is given in that order.
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 warns about an argument it passes to itself; nothing to act on here.
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(a[None, None], b[None, None], include_background=True, percentile=95,
                                           spacing=list(grid.spacing[::-1]))
    return float(value.item())


@dataclass
class CaseMetrics:
    """The accuracy of one registration result on one case."""

    tre_mm: float
    dsc: float
    fold_pct: float
    hd95_mm: float
    landmark_errors_mm: np.ndarray


def evaluate_transform(case: Case, transform: Transform) -> CaseMetrics:
    """All metrics of the module docstring for ``transform`` on ``case``."""
    grid = case.fixed_labels.grid
    warped_gland = resample(case.moving_labels.array[0], case.moving_labels.grid, transform, grid) > 0.5
    fixed_gland = case.fixed_labels.array[0] > 0.5
    errors = landmark_errors(case, transform)
    return CaseMetrics(
        tre_mm=rms(errors),
        dsc=dice(warped_gland, fixed_gland),
        fold_pct=folding_percent(transform, grid),
        hd95_mm=hd95(warped_gland, fixed_gland, grid),
        landmark_errors_mm=errors,
    )
