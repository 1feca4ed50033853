"""Sweep simulation: frame positions, frame poses, and rasterising frames into the sparse input."""

from __future__ import annotations

import numpy as np
import pytest

from MetaRegistrationLib.data import Volume
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.geometry import Grid, apply_affine
from MetaRegistrationLib.phantom import make_phantom_case
from MetaRegistrationLib.sweep import (
    SAGITTAL_AXIS,
    Frame,
    extract_frame,
    gland_extent,
    plane_pose,
    random_frame_positions,
    rasterise_frames,
    rasterise_positions,
    sagittal_pose,
    sample_frame,
    sweep_positions,
)

# Like the real data (direction diag(-1, -1, 1), shared corner origin) but anisotropic, so a
# swapped axis or spacing shows.
GRID = Grid.from_arrays((13, 17, 9), (1.5, 1.2, 2.0), (-1.5, -1.5, 1.5), np.diag([-1.0, -1.0, 1.0]))


def volume_and_gland(low: int = 3, high: int = 14) -> tuple[Volume, np.ndarray]:
    """A random TRUS volume on GRID and a box gland spanning planes j = low..high."""
    rng = np.random.default_rng(0)
    image = Volume(rng.uniform(1, 255, size=(1, *GRID.array_shape)).astype(np.float32), GRID)
    gland = np.zeros(GRID.array_shape, dtype=np.float32)
    gland[2:7, low:high + 1, 4:10] = 1.0
    return image, gland


def test_sagittal_axis_takes_the_plane_of_constant_j():
    image, _ = volume_and_gland()
    assert np.array_equal(np.take(image.array[0], 6, axis=SAGITTAL_AXIS), image.array[0][:, 6, :])


def test_sweep_positions_are_uniform_inside_the_gland_from_high_to_low_j():
    _, gland = volume_and_gland(3, 14)  # 12 planes
    assert gland_extent(gland) == (3, 14)
    assert sweep_positions(gland, 4) == [13, 10, 7, 4]  # centres of 4 parts of 3 planes each
    assert sweep_positions(gland, 12) == list(range(14, 2, -1))
    assert sweep_positions(gland, 1) == [9]
    for count in range(2, 13):
        positions = sweep_positions(gland, count)
        assert len(positions) == count
        assert all(3 <= p <= 14 for p in positions)
        steps = -np.diff(positions)
        assert (steps > 0).all(), "acquisition order is from the highest j to the lowest"
        assert steps.max() - steps.min() <= 1, "spacing is uniform up to rounding"


def test_sweep_positions_reject_impossible_counts_and_an_empty_gland():
    _, gland = volume_and_gland(3, 14)
    with pytest.raises(InputError, match="12 sagittal planes"):
        sweep_positions(gland, 13)
    with pytest.raises(InputError):
        sweep_positions(gland, 0)
    with pytest.raises(InputError, match="empty"):
        sweep_positions(np.zeros_like(gland), 3)
    with pytest.raises(InputError, match="empty"):
        random_frame_positions(np.zeros_like(gland), np.random.default_rng(0))


def test_a_gland_on_one_plane_is_refused_in_one_line():
    _, gland = volume_and_gland(5, 5)
    with pytest.raises(InputError) as caught:
        sweep_positions(gland, 2)
    assert str(caught.value) == ("cannot place 2 distinct frames on a TRUS gland label spanning 1 sagittal plane "
                                 "(j = 5..5); at most 1 fit")
    with pytest.raises(InputError, match="spans only 1 sagittal plane \\(j = 5..5\\), fewer than the 2 frames"):
        random_frame_positions(gland, np.random.default_rng(0))


def test_random_frame_positions_obey_bounds_and_are_distinct_and_ordered():
    _, gland = volume_and_gland(3, 14)
    rng = np.random.default_rng(42)
    counts = set()
    for _ in range(300):
        positions = random_frame_positions(gland, rng, f_min=2, f_max=10)
        counts.add(len(positions))
        assert 2 <= len(positions) <= 10
        assert len(set(positions)) == len(positions)
        assert all(3 <= p <= 14 for p in positions)
        assert positions == sorted(positions, reverse=True)
    assert counts == set(range(2, 11))
    first = [random_frame_positions(gland, np.random.default_rng(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2], "the same seed gives the same frames"


def test_random_frame_positions_on_a_narrow_gland():
    _, gland = volume_and_gland(5, 8)  # 4 planes
    rng = np.random.default_rng(1)
    assert all(2 <= len(random_frame_positions(gland, rng)) <= 4 for _ in range(50))
    with pytest.raises(InputError, match="only 4 sagittal planes"):
        random_frame_positions(gland, rng, f_min=5)


def test_extract_frame_is_the_slice_with_a_pose_to_its_voxels():
    image, gland = volume_and_gland()
    frame = extract_frame(image, gland, 6)
    assert np.array_equal(frame.image, image.array[0][:, 6, :])
    assert np.array_equal(frame.gland, gland[:, 6, :])
    assert frame.spacing == (1.5, 2.0)
    # Pixel (u, v) is voxel (i = u, j = 6, k = v).
    assert np.allclose(apply_affine(frame.pose, [4.0, 3.0, 0.0]), apply_affine(GRID.index_to_world, [4.0, 6.0, 3.0]))
    assert np.allclose(np.abs(frame.normal), [0.0, 1.0, 0.0])


@pytest.mark.parametrize("position", [-1, 17, 2.5])
def test_extract_frame_rejects_a_position_outside_the_volume(position):
    image, gland = volume_and_gland()
    with pytest.raises(InputError, match="outside the TRUS volume"):
        extract_frame(image, gland, position)
    with pytest.raises(InputError, match="outside the TRUS volume"):
        rasterise_positions(image, gland, [3, position])


def test_sample_frame_at_a_sagittal_pose_equals_the_slice():
    image, gland = volume_and_gland()
    sampled = sample_frame(image, gland, sagittal_pose(GRID, 9), (GRID.size[2], GRID.size[0]))
    assert np.allclose(sampled.image, image.array[0][:, 9, :], atol=1e-4)
    assert np.allclose(sampled.gland, gland[:, 9, :], atol=1e-6)


def test_rasterised_sagittal_frames_reproduce_their_slices_exactly():
    image, gland = volume_and_gland()
    positions = [12, 7, 3]
    frames = [extract_frame(image, gland, p) for p in positions]
    sparse_image, sparse_gland, mask = rasterise_frames(frames, GRID)
    expected_mask = np.zeros(GRID.array_shape, dtype=np.float32)
    expected_mask[:, positions, :] = 1.0
    assert sparse_image.dtype == sparse_gland.dtype == mask.dtype == np.float32
    assert np.array_equal(mask, expected_mask)
    assert np.array_equal(sparse_image, image.array[0] * expected_mask)
    assert np.array_equal(sparse_gland, gland * expected_mask)
    # The training fast path gives the same arrays.
    for fast, general in zip(rasterise_positions(image, gland, positions), (sparse_image, sparse_gland, mask)):
        assert np.array_equal(fast, general)


def test_fast_path_agrees_with_the_general_one_on_a_phantom():
    case, _ = make_phantom_case(seed=1, scale=0.5)
    gland = case.fixed_labels.array[0]
    positions = sweep_positions(gland, 5)
    frames = [extract_frame(case.fixed_image, gland, p) for p in positions]
    for fast, general in zip(rasterise_positions(case.fixed_image, gland, positions),
                             rasterise_frames(frames, case.fixed_image.grid)):
        assert np.array_equal(fast, general)


def diagonal_frame(rows: int = 9) -> tuple[Grid, np.ndarray, int]:
    """An isotropic grid and a radial frame pose through voxel (i=8, j=5): the plane i - j = 3 in index space.

    Pixel (u, v) lies on voxel (i = 4 + u, j = 1 + u, k = v), so its pixels fall on voxel centres.
    """
    grid = Grid.from_arrays((14, 12, rows), (1.5, 1.5, 1.5), (-1.5, -1.5, 1.5), np.diag([-1.0, -1.0, 1.0]))
    to_world = grid.index_to_world
    pose = plane_pose(apply_affine(to_world, [4.0, 1.0, 0.0]), to_world[:3, :3] @ [1.0, 1.0, 0.0],
                      to_world[:3, :3] @ [0.0, 0.0, 1.0])
    return grid, pose, 8


def test_a_radial_frame_rasterises_onto_the_voxels_it_crosses():
    grid, pose, columns = diagonal_frame()
    rows = grid.size[2]
    v, u = np.mgrid[0:rows, 0:columns].astype(np.float32)
    frame = Frame(image=10 + 3 * u + 7 * v, gland=(u > 3).astype(np.float32), pose=pose)
    assert np.isclose(frame.spacing[0], 1.5 * np.sqrt(2))
    image, gland, mask = rasterise_frames([frame], grid)
    k, j, i = np.nonzero(mask)
    assert len(k) == rows * columns, "one voxel per pixel: the plane is one voxel thick"
    assert (i - j == 3).all() and (i >= 4).all() and (i < 4 + columns).all()
    uu = i - 4
    assert np.allclose(image[k, j, i], 10 + 3 * uu + 7 * k)
    assert np.array_equal(gland[k, j, i], (uu > 3).astype(np.float32))
    assert (image[mask == 0] == 0).all()


def test_a_tilted_frame_takes_values_at_the_voxels_projections():
    """A frame cut at 30 degrees from a volume linear in world space; rasterised back, every covered voxel holds
    the volume's value at its projection on the plane, and lies within half a voxel of it."""
    grid = Grid.from_arrays((20, 18, 10), (1.5, 1.5, 1.5), (-1.5, -1.5, 1.5), np.diag([-1.0, -1.0, 1.0]))
    slope = np.array([0.7, -1.3, 0.4])
    points = grid.world_points()
    volume = Volume((points @ slope + 100.0)[None].astype(np.float32), grid)
    gland = np.ones(grid.array_shape, dtype=np.float32)
    angle = np.radians(30.0)
    to_world = grid.index_to_world
    # A radial plane through the probe axis (a k line at high i), rotated 30 degrees about it.
    u_step = to_world[:3, :3] @ [-np.cos(angle), np.sin(angle), 0.0]
    v_step = to_world[:3, :3] @ [0.0, 0.0, 1.0]
    pose = plane_pose(apply_affine(to_world, [19.0, 6.0, 0.0]), u_step, v_step)
    frame = sample_frame(volume, gland, pose, (10, 18))
    image, _, mask = rasterise_frames([frame], grid)
    corners = apply_affine(grid.world_to_index, apply_affine(pose, [[0, 0, 0], [17, 0, 0], [0, 9, 0], [17, 9, 0]]))
    assert (corners > -1e-9).all() and (corners < np.asarray(grid.size) - 1 + 1e-9).all(), "frame inside the volume"
    covered = mask > 0
    distance = (points[covered] - pose[:3, 3]) @ frame.normal
    assert (np.abs(distance) <= 0.75 + 1e-9).all()  # half a voxel of 1.5 mm
    projection = points[covered] - distance[:, None] * frame.normal
    u, v, _ = apply_affine(np.linalg.inv(pose), projection).T
    assert (u >= -0.5).all() and (u < 17.5).all()
    # Beyond the outermost pixel centres (u < 0 or u > 17) the frame's edge value is taken.
    within = (u >= 0) & (u <= 17)
    assert within.sum() > 150
    assert np.allclose(image[covered][within], projection[within] @ slope + 100.0, atol=1e-3)


def test_frames_covering_one_voxel_are_averaged():
    image, gland = volume_and_gland()
    frame = extract_frame(image, gland, 5)
    brighter = Frame(frame.image + 10, frame.gland, frame.pose)
    sparse_image, _, mask = rasterise_frames([frame, brighter], GRID)
    assert np.allclose(sparse_image[:, 5, :], image.array[0][:, 5, :] + 5)
    assert mask.sum() == GRID.size[0] * GRID.size[2]


def test_frame_rejects_a_pose_without_a_unit_normal():
    pose = np.eye(4)
    pose[:3, 2] = [0.0, 0.0, 2.0]
    with pytest.raises(InputError, match="unit normal"):
        Frame(np.zeros((3, 4)), np.zeros((3, 4)), pose)
    with pytest.raises(InputError, match="same shape"):
        Frame(np.zeros((3, 4)), np.zeros((4, 3)), np.eye(4))
