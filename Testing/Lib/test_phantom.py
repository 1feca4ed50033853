"""The synthetic phantom: deterministic, real-data-like geometry, and a true transform that registers it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from MetaRegistrationLib.data import Case
from MetaRegistrationLib.geometry import Transform, resample, weighted_centroid
from MetaRegistrationLib.phantom import make_phantom_case


@pytest.fixture(scope="module")
def full_size() -> tuple[Case, Transform]:
    return make_phantom_case(seed=0)


def landmark_errors(case: Case, transform: Transform) -> np.ndarray:
    """|phi(c_f) - c_m| in mm for each landmark channel (centroid TRE)."""
    errors = []
    for channel in range(1, len(case.fixed_labels.array)):
        fixed = weighted_centroid(case.fixed_labels.array[channel], case.fixed_labels.grid)
        moving = weighted_centroid(case.moving_labels.array[channel], case.moving_labels.grid)
        errors.append(np.linalg.norm(transform.map_points(fixed) - moving))
    return np.array(errors)


def test_the_same_seed_gives_the_same_case_and_another_seed_another():
    (a, phi_a), (b, phi_b) = make_phantom_case(seed=3, scale=0.5), make_phantom_case(seed=3, scale=0.5)
    for name in ("moving_image", "moving_labels", "fixed_image", "fixed_labels"):
        assert np.array_equal(getattr(a, name).array, getattr(b, name).array), name
    assert np.array_equal(phi_a.initial, phi_b.initial) and np.array_equal(phi_a.displacement, phi_b.displacement)
    c, _ = make_phantom_case(seed=4, scale=0.5)
    assert not np.array_equal(a.fixed_image.array, c.fixed_image.array)


def test_grids_are_like_the_real_data(full_size):
    case, transform = full_size
    assert case.case_id == "phantom-0"
    assert case.moving_image.grid.size == (69, 69, 64)
    assert case.fixed_image.grid.size == (47, 63, 44)
    for grid in (case.moving_image.grid, case.fixed_image.grid):
        assert grid.spacing == (1.5, 1.5, 1.5)
        assert grid.origin == (-1.5, -1.5, 1.5)
        assert np.allclose(grid.direction, np.diag([-1.0, -1.0, 1.0]))
    assert transform.grid == case.fixed_image.grid
    for volume in (case.moving_image, case.fixed_image):
        assert volume.array.dtype == np.float32 and volume.array.min() >= 0 and volume.array.max() <= 255


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_true_transform_maps_landmarks_onto_landmarks(scale, full_size):
    case, transform = full_size if scale == 1.0 else make_phantom_case(seed=0, scale=scale)
    assert 3 <= case.landmark_count <= 4
    true_errors = landmark_errors(case, transform)
    identity_errors = landmark_errors(case, Transform(np.eye(4)))
    assert true_errors.max() < 0.5, true_errors
    assert identity_errors.min() > 5.0, identity_errors  # like the real data's shared-corner placement


def test_labels_are_non_empty_and_landmarks_inside_the_gland(full_size):
    case, _ = full_size
    for labels in (case.moving_labels, case.fixed_labels):
        gland = labels.array[0]
        assert set(np.unique(gland)) == {0.0, 1.0}
        assert 5000 < gland.sum() < 20000  # about 45 x 35 x 40 mm: ~33 ml of 3.375 mm^3 voxels
        inside = gland > 0.5
        assert not (inside[[0, -1]].any() or inside[:, [0, -1]].any() or inside[:, :, [0, -1]].any())
        for blob in labels.array[1:]:
            assert blob.max() > 0.5
            peak = np.unravel_index(np.argmax(blob), blob.shape)
            assert gland[peak] == 1.0


def test_fixed_labels_are_the_moving_labels_resampled_through_the_true_transform(full_size):
    case, transform = full_size
    warped = resample(case.moving_labels.array, case.moving_labels.grid, transform, case.fixed_labels.grid)
    fixed_gland, warped_gland = case.fixed_labels.array[0] > 0.5, warped[0] > 0.5
    dice = 2 * (fixed_gland & warped_gland).sum() / (fixed_gland.sum() + warped_gland.sum())
    assert dice > 0.97
    assert np.abs(warped[1:] - case.fixed_labels.array[1:]).max() < 0.25  # trilinear vs exact blobs


def test_true_deformation_is_smooth_a_few_mm_and_does_not_fold(full_size):
    _, transform = full_size
    field = transform.displacement
    assert 1.5 < np.sqrt((field ** 2).sum(axis=0).mean()) < 4.0
    # d u_c / d(array axis a) for array axes (k, j, i), shape (k, j, i, 3, 3).
    per_axis = np.moveaxis(np.stack([np.stack(np.gradient(component, 1.5)) for component in field]), (0, 1), (-2, -1))
    # Array axis a steps along world direction column 2 - a of the grid: chain rule to world coordinates.
    axes_in_world = np.asarray(transform.grid.direction)[:, ::-1]
    jacobian = np.eye(3) + per_axis @ axes_in_world.T
    assert np.linalg.det(jacobian).min() > 0.3
    assert 5.0 < np.linalg.norm(transform.initial[:3, 3]) < 20.0


def test_intensity_models_differ_as_mr_and_ultrasound_do(full_size):
    case, _ = full_size
    trus, mr = case.fixed_image.array[0], case.moving_image.array[0]
    # Ultrasound: zero outside a fan whose apex is at high i (the far corners near the probe are empty),
    # attenuated with depth (low i darker than high i outside the gland).
    assert (trus[:, :5, -3:] == 0).all() and (trus[:, -5:, -3:] == 0).all()
    assert (trus[:, 25:38, 30:40] > 0).mean() > 0.95
    assert 0.1 < (trus == 0).mean() < 0.4
    # Gland hypoechoic against a shell of tissue just outside it.
    gland = case.fixed_labels.array[0] > 0.5
    shell = binary_dilation(gland, iterations=3) & ~gland & (trus > 0)
    assert trus[gland].mean() < 0.8 * trus[shell].mean()
    # MR: the rectum is dark at high i behind the gland; the gland is brighter than the rectum.
    moving_gland = case.moving_labels.array[0] > 0.5
    assert mr[:, 30:40, 50:58].mean() < 0.5 * mr[moving_gland].mean()
