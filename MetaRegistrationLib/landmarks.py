"""A local correction of a registration from clinician landmark pairs: Gaussian radial basis functions.

A pair (``p_f`` clicked on the TRUS, ``p_m`` its partner on the MR, world mm) is strong local evidence and weak
global evidence: on this data, copying one landmark's displacement to another landmark of the same case errs by
a median 2.2 mm when the two are within 10 mm, but by 9.3 mm beyond 30 mm (issue 11). So a pair must move the
registration near it and leave distant anatomy alone. Given ``phi`` (from the network, which keeps the frames'
evidence), the residuals ``r_i = p_m,i - phi(p_f,i)`` are interpolated by Gaussians about the TRUS points:

    c(x) = sum_j w_j exp(-|x - p_f,j|^2 / (2 radius^2)),   with   G w = r,   G_ij = exp(-|p_f,i - p_f,j|^2 / (2 radius^2))

and ``phi'(x) = phi(x) + c(x)`` maps every given ``p_f,i`` onto its ``p_m,i`` (to the trilinear sampling of the
field on its grid); the correction falls to 1% of a pair's residual at 3 radii. (Slicer's Landmark Registration
fits a thin-plate spline to the pairs instead, whose correction does not fade with distance.)

A Gaussian of amplitude ``|r|`` has a largest slope of about ``0.61 |r| / radius``, so a residual over 1.6 radii
could fold the field: :func:`corrected` widens the radius (by 1.5 at a time, up to 4 times) until the corrected
field folds no voxel the uncorrected one did not.

Why not SciPy's ``RBFInterpolator``: it fits the same system (``kernel="gaussian"``, ``degree=-1``), but its
``epsilon`` shape parameter hides the radius in mm that this module is about, and the system is N x N for the
handful of pairs a clinician clicks, so ``numpy.linalg.solve`` is the whole of it.
"""

from __future__ import annotations

import numpy as np

from .geometry import Grid, Transform
from .metrics import folding_percent

WIDENING = 1.5
"""Factor by which :func:`corrected` widens the radius when the correction would fold the field."""

MAX_WIDENING = 4.0
"""The radius is widened at most to this many times the one asked for."""

RIDGE = 1e-9
"""Added to ``G``'s diagonal, so that two pairs on (nearly) the same TRUS point still give a solution."""


def gaussian_correction(points: np.ndarray, centres: np.ndarray, weights: np.ndarray, radius_mm: float) -> np.ndarray:
    """``c`` at world points (..., 3): the sum of Gaussians of ``radius_mm`` about ``centres`` (N, 3) with vector
    ``weights`` (N, 3) in mm."""
    points = np.asarray(points, dtype=float)
    squared = ((points[..., None, :] - centres) ** 2).sum(-1)  # (..., N)
    return np.exp(-squared / (2 * radius_mm**2)) @ weights


def rbf_weights(centres: np.ndarray, residuals: np.ndarray, radius_mm: float) -> np.ndarray:
    """The weights (N, 3) whose Gaussian sum equals ``residuals`` (N, 3) at ``centres`` (N, 3)."""
    squared = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    gram = np.exp(-squared / (2 * radius_mm**2)) + RIDGE * np.eye(len(centres))
    return np.linalg.solve(gram, residuals)


def corrected(transform: Transform, fixed_points: np.ndarray, moving_points: np.ndarray, radius_mm: float
              ) -> tuple[Transform, float]:
    """``transform`` corrected so that it maps each TRUS point onto its MR point (see the module docstring).

    Args:
        transform: ``phi``, fixed world -> moving world, with a displacement field on its grid, which carries
            the correction (an affine-only transform is returned as it is).
        fixed_points, moving_points: (N, 3) world mm, the pairs.
        radius_mm: the Gaussians' radius (> 0).

    Returns:
        ``(phi', the radius used)``: the radius is widened (see :data:`WIDENING`) if the correction would fold
        voxels of the grid that ``phi`` does not fold.
    """
    fixed_points = np.asarray(fixed_points, dtype=float).reshape(-1, 3)
    moving_points = np.asarray(moving_points, dtype=float).reshape(-1, 3)
    if transform.displacement is None or not len(fixed_points):
        return transform, radius_mm
    grid: Grid = transform.grid
    residuals = moving_points - transform.map_points(fixed_points)
    # phi = A (x + u) + t, so phi + c = A (x + u + A^-1 c) + t: the correction enters u as A^-1 c.
    to_displacement = np.linalg.inv(transform.initial[:3, :3])
    points = grid.world_points()  # (k, j, i, 3)
    folding = None
    radius = radius_mm
    while True:
        weights = rbf_weights(fixed_points, residuals, radius)
        change = gaussian_correction(points, fixed_points, weights, radius) @ to_displacement.T
        candidate = Transform(transform.initial, transform.displacement + np.moveaxis(change, -1, 0), grid)
        if radius * WIDENING > radius_mm * MAX_WIDENING:
            return candidate, radius
        candidate_folding = folding_percent(candidate, grid)
        if candidate_folding > 0 and folding is None:  # phi's own folding, only when the candidate folds
            folding = folding_percent(transform, grid)
        if candidate_folding == 0 or candidate_folding <= folding:
            return candidate, radius
        radius *= WIDENING
