"""Registration accuracy and regularity, in world coordinates.

Definitions (the ones the project reports everywhere):

- DSC: the MR gland resampled trilinearly onto the TRUS grid through the full
  transform ``phi``, thresholded at 0.5, against TRUS gland > 0.5.
- TRE: for each landmark channel k >= 1, ``c_f`` is the intensity-weighted centroid
  of the TRUS blob (fixed world), ``c_m`` that of the matching MR blob (moving
  world); the error is ``|phi(c_f) - c_m|`` in mm. A case's TRE is the RMS over its
  landmarks. This is the resampling direction; the *inverse TRE* is the same RMS of ``|phi^-1(c_m) - c_f|``,
  the error a user sees with the MR landmarks put under the registration (``Transform.inverse_map_points``).
  The two differ where ``phi`` stretches or compresses the tissue about a landmark.
- Folding: % of fixed voxels where the Jacobian determinant of ``phi`` is <= 0.
- HD95: 95th percentile symmetric Hausdorff distance (mm) between the warped MR
  gland and the TRUS gland, both thresholded at 0.5.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

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


def point_errors(transform: Transform, fixed_points: np.ndarray, moving_points: np.ndarray) -> np.ndarray:
    """Errors ``|phi(p_f) - p_m|`` in mm of paired world points, (N, 3) each: the TRE of landmark blobs'
    centroids here, and of clicked landmark pairs in the Slicer module."""
    fixed_points = np.asarray(fixed_points, dtype=float).reshape(-1, 3)
    return np.linalg.norm(transform.map_points(fixed_points) - np.asarray(moving_points, dtype=float).reshape(-1, 3),
                          axis=-1)


def inverse_point_errors(transform: Transform, fixed_points: np.ndarray, moving_points: np.ndarray) -> np.ndarray:
    """Errors ``|phi^-1(p_m) - p_f|`` in mm of paired world points, (N, 3) each: where the MR point lands on the
    TRUS under the registration, against its TRUS partner."""
    moving_points = np.asarray(moving_points, dtype=float).reshape(-1, 3)
    return np.linalg.norm(transform.inverse_map_points(moving_points) - np.asarray(fixed_points, dtype=float)
                          .reshape(-1, 3), axis=-1)


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
    """The accuracy of one registration result (NaN for what was not measured).

    Attributes:
        tre_mm: RMS of ``landmark_errors_mm``. dsc: warped MR gland vs TRUS gland. fold_pct: % of TRUS voxels
        where ``phi`` folds. hd95_mm: 95th percentile Hausdorff distance of the glands.
        landmark_errors_mm: (N,) errors ``|phi(p_f) - p_m|`` of the point pairs, in their order.
        inverse_landmark_errors_mm: (N,) errors ``|phi^-1(p_m) - p_f|``; inverse_tre_mm: their RMS.
    """

    tre_mm: float
    dsc: float
    fold_pct: float
    hd95_mm: float
    landmark_errors_mm: np.ndarray
    inverse_tre_mm: float = float("nan")
    inverse_landmark_errors_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))


def measure(transform: Transform, fixed_grid: Grid, *, moving_gland: np.ndarray | None = None,
            moving_grid: Grid | None = None, fixed_gland: np.ndarray | None = None,
            fixed_points: np.ndarray | None = None, moving_points: np.ndarray | None = None,
            regularity: bool = True) -> CaseMetrics:
    """The one entry point for every metric of the module docstring; the library's evaluation, the Slicer Logic's
    evaluation panel and sweep table, and the web app's pair residuals all call it.

    Args:
        transform: ``phi``, fixed world -> moving world.
        fixed_grid: the TRUS grid DSC, HD95 and folding are computed on.
        moving_gland, moving_grid: the MR gland (k, j, i) on its grid; fixed_gland: the TRUS gland (k, j, i) on
            ``fixed_grid``. DSC and HD95 need all three (NaN otherwise).
        fixed_points, moving_points: (N, 3) paired world points (LPS mm): TRUS landmarks and the matching MR ones.
        regularity: compute folding and HD95 (the costly ones; NaN when False).
    """
    errors = inverse = np.zeros(0)
    if fixed_points is not None:
        errors = point_errors(transform, fixed_points, moving_points)
        inverse = inverse_point_errors(transform, fixed_points, moving_points)
    dsc = hd95_mm = float("nan")
    if moving_gland is not None and fixed_gland is not None:
        warped = resample(moving_gland, moving_grid, transform, fixed_grid) > 0.5
        fixed = np.asarray(fixed_gland) > 0.5
        dsc = dice(warped, fixed)
        if regularity:
            hd95_mm = hd95(warped, fixed, fixed_grid)
    return CaseMetrics(
        tre_mm=rms(errors),
        dsc=dsc,
        fold_pct=folding_percent(transform, fixed_grid) if regularity else float("nan"),
        hd95_mm=hd95_mm,
        landmark_errors_mm=errors,
        inverse_tre_mm=rms(inverse),
        inverse_landmark_errors_mm=inverse,
    )


def evaluate_transform(case: Case, transform: Transform) -> CaseMetrics:
    """All metrics of the module docstring for ``transform`` on ``case`` (landmarks: its label blobs' centroids)."""
    return measure(transform, case.fixed_labels.grid, moving_gland=case.moving_labels.array[0],
                   moving_grid=case.moving_labels.grid, fixed_gland=case.fixed_labels.array[0],
                   fixed_points=landmark_centroids(case.fixed_labels),
                   moving_points=landmark_centroids(case.moving_labels))
