"""Metric values against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from MetaRegistrationLib.data import Dataset
from MetaRegistrationLib.geometry import Grid, Transform, translation
from MetaRegistrationLib.metrics import dice, evaluate_transform, folding_percent, hd95, rms


def test_dice_of_overlapping_boxes():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert dice(a, b) == pytest.approx(2 * 16 / 64)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0


def test_rms():
    assert rms(np.array([3.0, 4.0])) == pytest.approx(np.sqrt(12.5))
    assert np.isnan(rms(np.array([])))


def test_folding_percent():
    grid = Grid.from_arrays((6, 5, 4), (1.5, 1.0, 2.0), (0, 0, 0))
    points = np.moveaxis(grid.world_points(), -1, 0)
    assert folding_percent(Transform(np.eye(4), np.zeros_like(points), grid), grid) == 0.0
    # u_x = -2 x: d phi_x / dx = -1 everywhere, so every voxel folds.
    folded = np.zeros_like(points)
    folded[0] = -2.0 * points[0]
    assert folding_percent(Transform(np.eye(4), folded, grid), grid) == pytest.approx(100.0)
    # x = 0, 1.5, ..., 7.5 along i; beyond 5 mm phi_x turns back: 0, 1.5, 3, 4.5, 4, 2.5.
    # Central differences are negative at i = 4 and 5 only: a third of the voxels fold.
    partial = np.zeros_like(points)
    partial[0] = np.where(points[0] > 5.0, -2.0 * (points[0] - 5.0), 0.0)
    assert folding_percent(Transform(np.eye(4), partial, grid), grid) == pytest.approx(100 * 2 / 6)


def test_hd95_of_shifted_boxes():
    grid = Grid.from_arrays((12, 12, 12), (2.0, 2.0, 2.0), (0, 0, 0))
    a = np.zeros(grid.array_shape, bool)
    a[3:8, 3:8, 3:8] = True
    assert hd95(a, a, grid) == 0.0
    b = np.roll(a, 2, axis=2)  # two voxels along i: 4 mm
    assert hd95(a, b, grid) == pytest.approx(4.0)


def test_known_translation_gives_zero_tre_and_full_dice(synthetic_dataset):
    case = Dataset(synthetic_dataset).load("a")  # MR = TRUS moved by (3, -1.5, 4.5) mm
    exact = evaluate_transform(case, Transform(translation([3.0, -1.5, 4.5])))
    assert exact.tre_mm < 0.01
    assert exact.dsc == pytest.approx(1.0)
    assert exact.fold_pct == 0.0
    wrong = evaluate_transform(case, Transform(np.eye(4))).landmark_errors_mm
    assert np.allclose(wrong, np.linalg.norm([3.0, -1.5, 4.5]), atol=0.01)
