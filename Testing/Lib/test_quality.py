"""Per-update quality signals (MetaRegistrationLib.quality), the inverse direction's errors (geometry, metrics) and
the sweep orders of the stability study (updates)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from MetaRegistrationLib.adaptation import AdaptationSession
from MetaRegistrationLib.geometry import Grid, Transform, apply_affine, translation
from MetaRegistrationLib.metrics import inverse_point_errors, point_errors
from MetaRegistrationLib.network import RegistrationNet
from MetaRegistrationLib.phantom import make_phantom_case
from MetaRegistrationLib.quality import (
    FOLDING_ALARM_PCT,
    spread_level,
    jackknife_spread,
    quality_signals,
)
from MetaRegistrationLib.settings import AdaptationSettings
from MetaRegistrationLib.sweep import extract_frame, sweep_positions
from MetaRegistrationLib.updates import SWEEP_ORDERS, ordered_frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom_case(seed=0, scale=0.5)


def smooth_field(grid: Grid, amplitude_mm: float, component: int = 1) -> np.ndarray:
    """A smooth displacement (3, k, j, i): one sine period across the grid along x, moving points along the world
    axis ``component`` (along y a shear, which never folds; along x a compression, which folds when strong)."""
    points = grid.world_points()
    span = np.ptp(points[..., 0]) or 1.0
    field = np.zeros((3, *grid.array_shape))
    field[component] = amplitude_mm * np.sin(2 * np.pi * (points[..., 0] - points[..., 0].min()) / span)
    return field


def session_of(phantom, **settings) -> AdaptationSession:
    case, _ = phantom
    torch.manual_seed(0)
    return AdaptationSession(RegistrationNet(), case.moving_image, case.moving_labels, case.fixed_image.grid,
                             settings=AdaptationSettings(**settings))


def frames_of(phantom, count: int):
    case, _ = phantom
    gland = case.fixed_labels.array[0]
    return [extract_frame(case.fixed_image, gland, p) for p in sweep_positions(gland, count)]


# --- the signals ------------------------------------------------------------------------------------------------

def test_jackknife_spread_of_two_replicates_at_plus_and_minus_d_is_d():
    """g = 2 replicates at +-d: sqrt((g-1)/g * (d^2 + d^2)) = d; identical replicates: 0."""
    mapped = np.zeros((2, 5, 3))
    mapped[0, :, 0], mapped[1, :, 0] = 1.5, -1.5
    np.testing.assert_allclose(jackknife_spread(mapped), 1.5)
    np.testing.assert_allclose(jackknife_spread(np.ones((4, 3, 3))), 0.0)


def test_spread_levels_follow_the_fixed_spread_limits():
    assert [spread_level(s) for s in (0.5, 1.0, 1.5, 2.0, 2.01)] == ["small", "small", "medium", "medium", "large"]
    assert spread_level(float("nan")) == ""


def test_signals_of_a_known_registration(phantom):
    """Identity on the phantom: the change from a 2 mm translation is 2 mm everywhere, the spread of replicates
    1 mm apart is 0.5 mm, no folding, and the fit is the glands' overlap on the frames."""
    case, _ = phantom
    grid = case.fixed_image.grid
    zero = Transform(np.eye(4), np.zeros((3, *grid.array_shape)), grid)
    shifted = Transform(translation([2.0, 0, 0]), np.zeros((3, *grid.array_shape)), grid)
    replicates = [Transform(translation([0.5, 0, 0]), zero.displacement, grid),
                  Transform(translation([-0.5, 0, 0]), zero.displacement, grid)]
    mask = np.zeros(grid.array_shape, dtype=np.float32)
    mask[:, ::3] = 1  # every third sagittal plane acquired
    gland = case.moving_labels.array[0]  # the MR gland as the acquired one: a perfect fit under the identity
    same_grid = case.moving_labels.grid == grid
    signals = quality_signals(zero, shifted, replicates, gland, case.moving_labels.grid,
                              gland if same_grid else case.fixed_labels.array[0], mask)
    assert signals.fold_pct == 0 and not signals.fold_alarm
    assert signals.change_median_mm == pytest.approx(2.0) and signals.change_p95_mm == pytest.approx(2.0)
    assert signals.spread_mm == pytest.approx(0.5)  # sqrt(1/2 * (0.5^2 + 0.5^2))
    assert signals.spread_level == "small"
    if same_grid:
        assert signals.acquired_dsc == pytest.approx(1.0)
    assert 0 <= signals.acquired_dsc <= 1
    assert len(signals.row()) == 7 and "moved 2.0 mm" in signals.describe()


def test_a_folding_field_rings_the_alarm(phantom):
    case, _ = phantom
    grid = case.fixed_image.grid
    folded = Transform(np.eye(4), smooth_field(grid, 40.0, component=0), grid)  # slope >> 1: folds
    signals = quality_signals(folded, None, [], case.moving_labels.array[0], case.moving_labels.grid,
                              case.fixed_labels.array[0], np.ones(grid.array_shape, dtype=np.float32))
    assert signals.fold_pct > FOLDING_ALARM_PCT and signals.fold_alarm and "ALARM" in signals.describe()
    assert math.isnan(signals.change_median_mm) and math.isnan(signals.spread_mm) and signals.spread_level == ""


# --- in a session -----------------------------------------------------------------------------------------------

def test_every_update_reports_its_signals_and_the_groups_do_not_change_the_registration(phantom):
    """From the second frame on each update has signals (the change from the third); the frame groups of the
    jackknife are bookkeeping only: one group or four, the same registration."""
    frames = frames_of(phantom, 5)
    grouped, single = session_of(phantom), session_of(phantom, spread_groups=0)
    for n, frame in enumerate(frames, start=1):
        result, reference = grouped.add_frames([frame]), single.add_frames([frame])
        if n == 1:
            assert result.quality is None
            continue
        assert result.quality_seconds > 0 and result.seconds >= result.quality_seconds
        assert math.isnan(result.quality.change_median_mm) == (n == 2)
        assert np.isfinite(result.quality.spread_mm) and result.quality.spread_level
        assert math.isnan(reference.quality.spread_mm) and reference.quality.spread_level == ""
        np.testing.assert_allclose(result.transform.displacement, reference.transform.displacement, atol=1e-5)


def test_a_rolled_back_interaction_keeps_the_previous_registration_for_the_change(phantom):
    frames = frames_of(phantom, 4)
    session = session_of(phantom)
    session.add_frames(frames[:2])
    state = session.snapshot()
    first = session.add_frames([frames[2]])
    session.restore(state)
    again = session.add_frames([frames[2]])
    assert again.quality.change_median_mm == pytest.approx(first.quality.change_median_mm)


# --- the direction a user sees ----------------------------------------------------------------------------------

def test_the_inverse_maps_back_and_its_errors_differ_from_the_resampling_direction(phantom):
    case, _ = phantom
    grid = case.fixed_image.grid
    transform = Transform(translation([1.0, -2.0, 0.5]), smooth_field(grid, 2.0, component=0), grid)
    fixed = grid.world_points()[::4, ::4, ::4].reshape(-1, 3)
    moving = transform.map_points(fixed)
    np.testing.assert_allclose(transform.map_points(transform.inverse_map_points(moving)), moving, atol=1e-4)
    np.testing.assert_allclose(inverse_point_errors(transform, fixed, moving), 0, atol=1e-4)
    # Off the map: the two directions disagree where the field stretches, agree for a translation.
    target = moving + [1.0, 0.0, 0.0]
    assert not np.allclose(inverse_point_errors(transform, fixed, target), point_errors(transform, fixed, target),
                           atol=1e-3)
    rigid = Transform(translation([1.0, -2.0, 0.5]))
    np.testing.assert_allclose(inverse_point_errors(rigid, fixed, target), point_errors(rigid, fixed, target))


# --- sweep orders -----------------------------------------------------------------------------------------------

def test_sweep_orders_reverse_shift_and_shuffle_the_same_planes(phantom):
    case, _ = phantom
    to_index = case.fixed_image.grid.world_to_index
    planes = {order: [int(round(apply_affine(to_index, f.pose[:3, 3])[1])) for f in ordered_frames(case, 5, order)]
              for order in SWEEP_ORDERS}
    assert planes["right-to-left"] == sorted(planes["right-to-left"], reverse=True)
    assert planes["left-to-right"] == planes["right-to-left"][::-1]
    assert planes["shifted"] == [p - 1 for p in planes["right-to-left"]]
    assert sorted(planes["random"]) == sorted(planes["right-to-left"])
    again = [f.pose for f in ordered_frames(case, 5, "random")]
    assert all(np.array_equal(a, f.pose) for a, f in zip(again, ordered_frames(case, 5, "random")))
