"""The coordinate convention: points move by known amounts, warping agrees with SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial.transform import Rotation

from MetaRegistrationLib.alignment import initial_alignment
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.geometry import (
    LPS_TO_RAS,
    Grid,
    Transform,
    apply_affine,
    resample,
    translation,
    warp,
    weighted_centroid,
)

ROTATION = Rotation.from_euler("xyz", [10, -7, 25], degrees=True).as_matrix()


def oblique_grid() -> Grid:
    return Grid.from_arrays((11, 9, 7), (1.2, 0.9, 1.7), (-20.0, 5.0, 12.5), ROTATION)


def test_index_to_world_follows_itk():
    grid = oblique_grid()
    image = sitk.Image(list(grid.size), sitk.sitkFloat32)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(np.asarray(grid.direction).ravel().tolist())
    index = (3.5, 2.0, 6.25)
    expected = image.TransformContinuousIndexToPhysicalPoint(index)
    assert np.allclose(apply_affine(grid.index_to_world, index), expected, atol=1e-9)
    assert np.allclose(apply_affine(grid.world_to_index, expected), index, atol=1e-9)
    # world_points is (k, j, i, 3): voxel (i=3, j=2, k=6) sits at [6, 2, 3].
    assert np.allclose(grid.world_points()[6, 2, 3], image.TransformIndexToPhysicalPoint((3, 2, 6)))


def test_lps_to_ras_flips_x_and_y():
    assert np.allclose(apply_affine(LPS_TO_RAS, [10.0, -20.0, 30.0]), [-10.0, 20.0, 30.0])


def test_translation_moves_a_point_by_plus_the_offset():
    transform = Transform(translation([5.0, -3.0, 2.0]))
    assert np.allclose(transform.map_points([[1.0, 1.0, 1.0]]), [[6.0, -2.0, 3.0]])


def test_displacement_is_added_before_the_initial_alignment():
    grid = Grid.from_arrays((8, 7, 6), (1.5, 1.5, 1.5), (0, 0, 0))
    # u(x) = B x is linear, so trilinear interpolation reproduces it exactly between voxels.
    gradient = np.array([[0.05, 0.01, 0.0], [0.0, -0.03, 0.02], [0.01, 0.0, 0.04]])
    field = np.moveaxis(grid.world_points() @ gradient.T, -1, 0)
    initial = translation([10.0, 0.0, -5.0])
    transform = Transform(initial, field, grid)
    points = np.array([[2.3, 4.1, 3.3], [7.0, 1.0, 6.2]])
    expected = apply_affine(initial, points + points @ gradient.T)
    assert np.allclose(transform.map_points(points), expected, atol=1e-9)
    assert np.allclose(transform.map_grid(grid)[2, 3, 4], apply_affine(initial, grid.world_points()[2, 3, 4]
                                                                        + field[:, 2, 3, 4]))


def test_rigidly_moved_grid_is_recovered_exactly():
    """The same array on a rotated, translated grid: phi = R x + t gives centroid TRE 0."""
    fixed_grid = Grid.from_arrays((16, 18, 14), (1.5, 1.5, 1.5), (-10.0, 3.0, 7.0))
    rigid = np.eye(4)
    rigid[:3, :3] = ROTATION
    rigid[:3, 3] = [4.0, -6.0, 2.5]
    moving_grid = Grid.from_arrays(fixed_grid.size, fixed_grid.spacing, apply_affine(rigid, fixed_grid.origin),
                                   ROTATION @ np.asarray(fixed_grid.direction))
    k, j, i = np.meshgrid(np.arange(14), np.arange(18), np.arange(16), indexing="ij")
    volume = np.exp(-((k - 5.3) ** 2 + (j - 9.1) ** 2 + (i - 6.7) ** 2) / 6.0)
    fixed_centroid = weighted_centroid(volume, fixed_grid)
    moving_centroid = weighted_centroid(volume, moving_grid)
    error = np.linalg.norm(Transform(rigid).map_points(fixed_centroid) - moving_centroid)
    assert error < 0.01
    # And the identity is wrong by the full motion.
    assert np.linalg.norm(fixed_centroid - moving_centroid) > 5.0


def test_resample_matches_simpleitk():
    rng = np.random.default_rng(0)
    moving_grid = oblique_grid()
    fixed_grid = Grid.from_arrays((10, 12, 9), (1.0, 1.1, 1.3), (-16.0, 6.0, 13.0))
    moving = rng.random(moving_grid.array_shape).astype(np.float32)
    field = 0.8 * rng.standard_normal((3, *fixed_grid.array_shape))
    initial = np.eye(4)
    initial[:3, :3] = Rotation.from_euler("z", 5, degrees=True).as_matrix()
    initial[:3, 3] = [1.0, -0.5, 0.7]
    transform = Transform(initial, field, fixed_grid)
    ours = resample(moving, moving_grid, transform, fixed_grid)

    moving_image = sitk.GetImageFromArray(moving)
    moving_image.SetSpacing(moving_grid.spacing)
    moving_image.SetOrigin(moving_grid.origin)
    moving_image.SetDirection(np.asarray(moving_grid.direction).ravel().tolist())
    field_image = sitk.GetImageFromArray(np.moveaxis(field, 0, -1), isVector=True)
    field_image.SetSpacing(fixed_grid.spacing)
    field_image.SetOrigin(fixed_grid.origin)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(initial[:3, :3].ravel().tolist())
    affine.SetTranslation(initial[:3, 3].tolist())
    # ITK's composite applies the last-added transform first: x -> x + u(x), then the affine.
    composite = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(sitk.Cast(field_image, sitk.sitkVectorFloat64))])
    reference = sitk.Image(list(fixed_grid.size), sitk.sitkFloat32)
    reference.SetSpacing(fixed_grid.spacing)
    reference.SetOrigin(fixed_grid.origin)
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving_image, reference, composite, sitk.sitkLinear, 0.0))

    # Compare where phi lands well inside the moving grid (padding rules differ at the border).
    index = apply_affine(moving_grid.world_to_index, transform.map_grid(fixed_grid))
    inside = np.all((index > 0.05) & (index < np.asarray(moving_grid.size) - 1.05), axis=-1)
    assert inside.sum() > 100
    assert np.allclose(ours[inside], theirs[inside], atol=1e-4)


def test_torch_warp_agrees_with_resample_and_has_gradients():
    rng = np.random.default_rng(1)
    moving_grid = oblique_grid()
    fixed_grid = Grid.from_arrays((10, 12, 9), (1.0, 1.1, 1.3), (-16.0, 6.0, 13.0))
    moving = rng.random(moving_grid.array_shape).astype(np.float32)
    field = 0.5 * rng.standard_normal((3, *fixed_grid.array_shape)).astype(np.float32)
    initial = translation([0.5, -1.0, 0.3])
    displacement = torch.tensor(field[None], requires_grad=True)
    warped = warp(torch.tensor(moving)[None, None], moving_grid, fixed_grid, torch.tensor(initial), displacement)
    expected = resample(moving, moving_grid, Transform(initial, field, fixed_grid), fixed_grid)
    assert np.allclose(warped[0, 0].detach().numpy(), expected, atol=1e-4)
    warped.sum().backward()
    assert torch.isfinite(displacement.grad).all() and displacement.grad.abs().sum() > 0


def test_initial_alignments():
    fixed_grid = Grid.from_arrays((10, 10, 10), (1.0, 1.0, 1.0), (0, 0, 0))
    moving_grid = Grid.from_arrays((20, 10, 10), (1.0, 2.0, 1.0), (5, 5, 5))
    gland = np.zeros((10, 10, 10))
    gland[2:4, 2:4, 2:4] = 1.0  # centroid at index 2.5 on every axis
    assert np.allclose(initial_alignment("identity", fixed_grid, moving_grid), np.eye(4))
    fov = initial_alignment("fov-centre", fixed_grid, moving_grid)
    assert np.allclose(apply_affine(fov, fixed_grid.fov_centre()), moving_grid.fov_centre())
    centroid = initial_alignment("centroid", fixed_grid, moving_grid, gland, gland)
    assert np.allclose(centroid[:3, 3], [5.0, 7.5, 5.0])
    given = translation([1, 2, 3])
    assert np.allclose(initial_alignment(given, fixed_grid, moving_grid), given)
    with pytest.raises(InputError, match="unknown initial alignment"):
        initial_alignment("centre", fixed_grid, moving_grid)
    with pytest.raises(InputError, match="4x4"):
        initial_alignment(np.eye(3), fixed_grid, moving_grid)
    with pytest.raises(InputError, match="empty"):
        initial_alignment("centroid", fixed_grid, moving_grid, np.zeros((10, 10, 10)), gland)


def test_warp_gradients_match_finite_differences():
    """``torch.autograd.gradcheck`` of the one spatial transformer, as MONAI's warp tests do: in float64 on a tiny
    oblique grid, with respect to the moving volume, the displacement and the initial alignment."""
    torch.manual_seed(0)
    moving_grid = Grid.from_arrays((5, 4, 3), (1.5, 2.0, 1.0), (0.5, -1.0, 2.0), ROTATION)
    fixed_grid = Grid.from_arrays((4, 3, 3), (1.2, 1.7, 1.4), (1.0, 0.0, 2.5))
    moving = torch.rand(1, 2, *moving_grid.array_shape, dtype=torch.float64, requires_grad=True)
    # Small displacements keep every sample inside one trilinear cell (the warp is piecewise smooth).
    displacement = (0.1 * torch.rand(1, 3, *fixed_grid.array_shape, dtype=torch.float64)).requires_grad_()
    initial = torch.as_tensor(translation([0.3, -0.2, 0.1]), dtype=torch.float64).requires_grad_()

    def warped(volume, field, alignment):
        return warp(volume, moving_grid, fixed_grid, alignment, field)

    assert torch.autograd.gradcheck(warped, (moving, displacement, initial), eps=1e-6, atol=1e-5)
