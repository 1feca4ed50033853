"""The local correction from landmark pairs (MetaRegistrationLib.landmarks) and sessions that use it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MetaRegistrationLib.adaptation import AdaptationSession
from MetaRegistrationLib.geometry import Grid, Transform, apply_affine
from MetaRegistrationLib.landmarks import MAX_WIDENING, corrected
from MetaRegistrationLib.metrics import folding_percent
from MetaRegistrationLib.network import RegistrationNet
from MetaRegistrationLib.phantom import make_phantom_case
from MetaRegistrationLib.settings import AdaptationSettings
from MetaRegistrationLib.sweep import extract_frame, sweep_positions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = Grid.from_arrays((30, 34, 28), (1.5, 1.5, 1.5), (20.0, 25.0, -18.0), np.diag([-1.0, -1.0, 1.0]))
ROTATION = np.array([[0.995, -0.0998, 0.0], [0.0998, 0.995, 0.0], [0.0, 0.0, 1.0]])


def smooth_transform() -> Transform:
    """A rotated, translated initial alignment and a smooth sinusoidal displacement (about 2 mm) on GRID."""
    initial = np.eye(4)
    initial[:3, :3], initial[:3, 3] = ROTATION, (3.0, -2.0, 1.0)
    points = GRID.world_points()
    displacement = 2.0 * np.stack([np.sin(points[..., 1] / 15), np.cos(points[..., 2] / 12),
                                   np.sin(points[..., 0] / 18)])
    return Transform(initial, displacement, GRID)


def test_the_pairs_are_honoured_and_far_anatomy_is_left_alone():
    transform = smooth_transform()
    fixed = np.array([[-2.0, 0.0, 5.0], [8.0, -6.0, 12.0]])
    moving = transform.map_points(fixed) + np.array([[3.0, -2.0, 1.0], [-1.5, 2.5, 2.0]])  # residuals 2-4 mm
    result, radius = corrected(transform, fixed, moving, radius_mm=8.0)
    assert radius == 8.0
    assert np.linalg.norm(result.map_points(fixed) - moving, axis=1).max() < 0.1  # trilinear sampling only
    far = np.array([[-20.0, -22.0, -15.0]])  # over 3.5 radii from both pairs
    assert np.linalg.norm(result.map_points(far) - transform.map_points(far)) < 0.05
    near = np.array([[0.0, 0.0, 6.0]])
    assert np.linalg.norm(result.map_points(near) - transform.map_points(near)) > 1.0
    assert folding_percent(result, GRID) == folding_percent(transform, GRID) == 0.0


def test_a_residual_that_would_fold_widens_the_radius():
    transform = smooth_transform()
    fixed = np.array([[0.0, 0.0, 6.0]])
    moving = transform.map_points(fixed) + np.array([[12.0, 0.0, 0.0]])  # 12 mm at a 3 mm radius folds
    result, radius = corrected(transform, fixed, moving, radius_mm=3.0)
    assert 3.0 < radius <= 3.0 * MAX_WIDENING
    assert folding_percent(result, GRID) == 0.0
    assert np.linalg.norm(result.map_points(fixed) - moving) < 0.5


def test_no_pairs_or_no_field_changes_nothing():
    transform = smooth_transform()
    assert corrected(transform, np.zeros((0, 3)), np.zeros((0, 3)), 10.0)[0] is transform
    affine = Transform(np.eye(4))
    assert corrected(affine, np.ones((1, 3)), np.zeros((1, 3)), 10.0)[0] is affine


@pytest.fixture(scope="module")
def phantom():
    return make_phantom_case(seed=0, scale=0.5)


def _session(case) -> AdaptationSession:
    torch.manual_seed(0)
    settings = AdaptationSettings(updates_per_interaction=1, landmark_radius_mm=10.0)
    return AdaptationSession(RegistrationNet(), case.moving_image, case.moving_labels, case.fixed_image.grid,
                             settings=settings)


@pytest.mark.parametrize("order", ["pairs after the frames", "pairs first", "pairs between frames",
                                   "pairs, frames, pairs again"])
def test_a_session_honours_its_pairs_in_any_order_of_interactions(phantom, order):
    """A case with a known deformation: every given pair lands on its MR point, however the interactions came."""
    case, true = phantom
    gland = case.fixed_labels.array[0]
    frames = [extract_frame(case.fixed_image, gland, p) for p in sweep_positions(gland, 6)]
    voxels = np.argwhere(gland > 0.5)[[10, -10]]
    fixed = apply_affine(case.fixed_image.grid.index_to_world, voxels[:, ::-1].astype(float))
    moving = true.map_points(fixed)
    session = _session(case)
    steps = {"pairs after the frames": [("frames", 0, 6), ("pairs", 0, 2)],
             "pairs first": [("pairs", 0, 2), ("frames", 0, 6)],
             "pairs between frames": [("frames", 0, 3), ("pairs", 0, 2), ("frames", 3, 6)],
             "pairs, frames, pairs again": [("pairs", 0, 1), ("frames", 0, 6), ("pairs", 1, 2)]}[order]
    for kind, start, stop in steps:
        result = session.add_frames(frames[start:stop]) if kind == "frames" else \
            session.add_landmarks(moving[start:stop], fixed[start:stop])
    residuals = np.linalg.norm(result.transform.map_points(fixed) - moving, axis=1)
    assert residuals.max() < 0.3, residuals
    assert folding_percent(result.transform, case.fixed_image.grid) == 0.0
