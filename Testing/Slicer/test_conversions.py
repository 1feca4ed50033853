"""RAS <-> LPS between MRML nodes and library objects (MetaRegistrationSlicer.conversions), on slicer-core's MRML."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")
import vtk  # noqa: E402

from MetaRegistrationLib.errors import InputError  # noqa: E402
from MetaRegistrationLib.geometry import Grid, Transform, apply_affine, translation  # noqa: E402
from MetaRegistrationLib.sweep import Frame, plane_pose, sample_frame, extract_frame  # noqa: E402
from MetaRegistrationLib.data import Volume  # noqa: E402
from MetaRegistrationSlicer import conversions  # noqa: E402


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


OBLIQUE = Grid.from_arrays((9, 8, 7), (1.5, 2.0, 2.5), (10.0, -20.0, 30.0), rotation((1, 2, 3), 25))
"""An oblique LPS grid (i, j, k sizes differ) so that any axis or sign mix-up shows."""


def volume_node(scene, array, grid, className="vtkMRMLScalarVolumeNode", name="volume"):
    node = scene.AddNewNodeByClass(className, name)
    conversions.updateVolumeNode(node, array, grid)
    return node


def linear_transform_node(scene, matrix_ras, name="tracking"):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(conversions.matrixFromArray(matrix_ras))
    return node


def random_field(grid, seed=0, scale=2.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=(3, *grid.array_shape))


# --- volumes ----------------------------------------------------------------------------------------------------

def storage_round_trip(scene, node, path):
    """Write ``node`` to ``path`` with its default storage node and read it into a new node of its class."""
    writer = node.CreateDefaultStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(node)
    loaded = scene.AddNewNodeByClass(node.GetClassName(), "read")
    reader = loaded.CreateDefaultStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    return loaded


def test_volume_round_trip_and_slicer_sees_each_voxel_at_the_flipped_point(mrml_scene):
    array = np.random.default_rng(0).normal(size=OBLIQUE.array_shape).astype(np.float32)
    node = volume_node(mrml_scene, array, OBLIQUE)
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    lps = apply_affine(OBLIQUE.index_to_world, [2, 3, 4])
    np.testing.assert_allclose(ijk_to_ras.MultiplyPoint((2, 3, 4, 1))[:3], [-lps[0], -lps[1], lps[2]], atol=1e-12)
    # Slicer's (k, j, i) array is the library's: voxel (i=2, j=3, k=4) holds array[4, 3, 2].
    assert slicer.util.arrayFromVolume(node)[4, 3, 2] == array[4, 3, 2]
    volume = conversions.volumeFromNode(node)
    np.testing.assert_array_equal(volume.array[0], array)
    np.testing.assert_allclose(volume.grid.index_to_world, OBLIQUE.index_to_world, atol=1e-12)
    assert volume.grid.size == OBLIQUE.size and volume.source == "volume"


def test_tracked_volume_is_read_in_world_coordinates_only_when_asked(mrml_scene):
    node = volume_node(mrml_scene, np.zeros(OBLIQUE.array_shape, np.float32), OBLIQUE)
    shift_ras = np.array([5.0, -7.0, 2.0])
    node.SetAndObserveTransformNodeID(linear_transform_node(mrml_scene, translation(shift_ras)).GetID())
    np.testing.assert_allclose(conversions.gridFromVolumeNode(node, world=False).origin, OBLIQUE.origin)
    np.testing.assert_allclose(conversions.gridFromVolumeNode(node, world=True).origin,
                               np.asarray(OBLIQUE.origin) + shift_ras * [-1, -1, 1])


def test_single_slice_or_vector_volume_is_not_a_3d_volume(mrml_scene):
    flat = volume_node(mrml_scene, np.zeros((1, 8, 9), np.float32),
                       Grid.from_arrays((9, 8, 1), (1, 1, 1), (0, 0, 0)), name="a frame")
    with pytest.raises(InputError, match="^a frame: is a single-slice image"):
        conversions.volumeFromNode(flat)


# --- the transform direction ------------------------------------------------------------------------------------

def test_known_shift_moves_trus_points_to_mr_and_hardening_moves_mr_points_back(mrml_scene):
    shift_lps = np.array([3.0, -1.5, 4.5])
    shift_ras = shift_lps * [-1, -1, 1]
    node = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "phi")
    conversions.setGridTransform(node, Transform(translation(shift_lps)), OBLIQUE)
    trus_point_lps = apply_affine(OBLIQUE.index_to_world, [3.3, 2.2, 4.4])
    trus_point_ras = conversions.lpsToRas(trus_point_lps)
    # phi is the FromParent: a TRUS (world) point goes to the MR point of the same tissue.
    np.testing.assert_allclose(node.GetTransformFromParent().TransformPoint(trus_point_ras),
                               trus_point_ras + shift_ras, atol=1e-9)
    # An MR fiducial at phi(p) under the node sits at p in the world, and hardening keeps it there.
    fiducials = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "MR points")
    fiducials.AddControlPoint(vtk.vtkVector3d(*(trus_point_ras + shift_ras)), "apex")
    fiducials.SetAndObserveTransformNodeID(node.GetID())
    slicer.vtkSlicerTransformLogic().hardenTransform(fiducials)
    hardened = [0.0, 0.0, 0.0]
    fiducials.GetNthControlPointPosition(0, hardened)
    np.testing.assert_allclose(hardened, trus_point_ras, atol=1e-3)
    # Read back, the node is phi again.
    back = conversions.transformFromNode(node, OBLIQUE)
    np.testing.assert_allclose(back.map_points(trus_point_lps), trus_point_lps + shift_lps, atol=1e-9)


def test_slicer_resamples_a_volume_under_the_node_as_the_library_does(mrml_scene):
    """Hardening an MR volume under the node resamples it at FromParent(x): the library's MR(phi(x))."""
    grid = Grid.from_arrays((12, 11, 10), (2.0, 2.0, 2.0), (-10.0, -12.0, 5.0), rotation((0, 0, 1), 90))
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in grid.array_shape), indexing="ij")
    mr = (np.sin(i / 2.0) + np.cos(j / 3.0) + k / 4.0).astype(np.float32)
    transform = Transform(translation([2.0, -1.0, 3.0]), 0.3 * random_field(grid, scale=1.0), grid)
    node = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "phi")
    conversions.setGridTransform(node, transform, grid)
    mr_node = volume_node(mrml_scene, mr, grid, name="MR")
    mr_node.SetAndObserveTransformNodeID(node.GetID())
    slicer.vtkSlicerTransformLogic().hardenTransform(mr_node)
    hardened = conversions.volumeFromNode(mr_node)
    from MetaRegistrationLib.geometry import resample

    expected = resample(mr, grid, transform, hardened.grid)
    # Compare where phi(x) stays well inside the MR (edge handling differs between VTK and the library).
    index = apply_affine(grid.world_to_index, transform.map_grid(hardened.grid))
    inside = np.all((index > 1) & (index < np.asarray(grid.size) - 2), axis=-1)
    assert inside.sum() > 200
    np.testing.assert_allclose(hardened.array[0][inside], expected[inside], atol=1e-3)


def test_transform_round_trip_with_rotation_and_displacement(mrml_scene):
    initial = np.eye(4)
    initial[:3, :3] = rotation((0, 1, 1), 10)
    initial[:3, 3] = [4.0, -2.0, 1.0]
    transform = Transform(initial, random_field(OBLIQUE), OBLIQUE)
    node = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "phi")
    conversions.setGridTransform(node, transform)
    back = conversions.transformFromNode(node, OBLIQUE)
    np.testing.assert_allclose(back.map_grid(OBLIQUE), transform.map_grid(OBLIQUE), atol=1e-9)
    # Between voxels too: phi is affine in u, so interpolating phi(x) - x is interpolating phi.
    points = apply_affine(OBLIQUE.index_to_world, np.random.default_rng(1).uniform(0, 6, size=(50, 3)))
    np.testing.assert_allclose(back.map_points(points), transform.map_points(points), atol=1e-9)


def test_grid_transform_round_trips_through_an_h5_file(mrml_scene, tmp_path):
    transform = Transform(translation([1.0, 2.0, -3.0]), random_field(OBLIQUE), OBLIQUE)
    node = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "phi")
    conversions.setGridTransform(node, transform)
    loaded = storage_round_trip(mrml_scene, node, tmp_path / "phi.h5")
    np.testing.assert_allclose(conversions.transformFromNode(loaded, OBLIQUE).map_grid(OBLIQUE),
                               transform.map_grid(OBLIQUE), atol=1e-6)


# --- labels -----------------------------------------------------------------------------------------------------

def two_label_array() -> np.ndarray:
    labels = np.zeros(OBLIQUE.array_shape, np.uint8)
    labels[2:5, 2:6, 3:7] = 1
    labels[5, 5, 5] = 2
    return labels


def segmentation_from_labelmap(scene, labelmap, name="segmentation"):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    return node


def test_gland_from_labelmap_and_from_a_segment_of_a_shared_labelmap(mrml_scene):
    labels = two_label_array()
    labelmap = volume_node(mrml_scene, labels, OBLIQUE, "vtkMRMLLabelMapVolumeNode", "labels")
    np.testing.assert_array_equal(conversions.glandOnGrid(labelmap, OBLIQUE), labels > 0)
    segmentation = segmentation_from_labelmap(mrml_scene, labelmap)
    with pytest.raises(InputError, match="^segmentation: has 2 segments .*choose the gland segment"):
        conversions.glandOnGrid(segmentation, OBLIQUE)
    first = segmentation.GetSegmentation().GetNthSegmentID(0)
    segmentation.GetSegmentation().GetSegment(first).SetName("Prostate")
    # Both segments share one labelmap: the gland is the voxels holding its own label value, not every label.
    np.testing.assert_array_equal(conversions.glandOnGrid(segmentation, OBLIQUE), labels == 1)
    np.testing.assert_array_equal(conversions.glandOnGrid(segmentation, OBLIQUE, "Label_2"), labels == 2)
    with pytest.raises(InputError, match="^segmentation: has no segment 'lesion'"):
        conversions.glandOnGrid(segmentation, OBLIQUE, "lesion")


def test_gland_is_resampled_onto_another_grid_by_world_position(mrml_scene):
    labels = two_label_array()
    labelmap = volume_node(mrml_scene, labels, OBLIQUE, "vtkMRMLLabelMapVolumeNode", "labels")
    # A grid of half the spacing on the same axes: voxel (2i, 2j, 2k) is voxel (i, j, k) of the labels.
    fine = Grid.from_arrays(np.asarray(OBLIQUE.size) * 2 - 1, np.asarray(OBLIQUE.spacing) / 2, OBLIQUE.origin,
                            OBLIQUE.direction)
    gland = conversions.glandOnGrid(labelmap, fine)
    np.testing.assert_array_equal(gland[::2, ::2, ::2], labels > 0)


def test_empty_or_missing_gland_is_reported_with_the_node(mrml_scene):
    empty = volume_node(mrml_scene, np.zeros(OBLIQUE.array_shape, np.uint8), OBLIQUE, "vtkMRMLLabelMapVolumeNode",
                        "empty labels")
    with pytest.raises(InputError, match="^empty labels: the MR gland is empty"):
        conversions.glandOnGrid(empty, OBLIQUE, role="MR gland")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no segments")
    with pytest.raises(InputError, match="^no segments: has no segment"):
        conversions.glandOnGrid(segmentation, OBLIQUE)
    segmentation.GetSegmentation().AddEmptySegment("", "gland", [1, 0, 0])
    with pytest.raises(InputError, match=r"^no segments \(segment 'gland'\): is empty$"):
        conversions.glandOnGrid(segmentation, OBLIQUE)


def test_segmentation_round_trips_through_a_seg_nrrd_file(mrml_scene, tmp_path):
    labels = two_label_array()
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "written")
    conversions.segmentationFromMask(segmentation, labels == 1, OBLIQUE, "prostate")
    np.testing.assert_array_equal(conversions.glandOnGrid(segmentation, OBLIQUE), labels == 1)
    loaded = storage_round_trip(mrml_scene, segmentation, tmp_path / "gland.seg.nrrd")
    np.testing.assert_array_equal(conversions.glandOnGrid(loaded, OBLIQUE, "prostate"), labels == 1)
    # Writing again replaces the segment's voxels instead of adding a segment.
    conversions.segmentationFromMask(segmentation, labels == 2, OBLIQUE, "prostate")
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(conversions.glandOnGrid(segmentation, OBLIQUE), labels == 2)


# --- frames -----------------------------------------------------------------------------------------------------

@pytest.fixture
def trus():
    """A TRUS volume (LPS, oblique) with a gland, and its gland."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in OBLIQUE.array_shape), indexing="ij")
    gland = (((i - 4) / 3) ** 2 + ((j - 3.5) / 3) ** 2 + ((k - 3) / 2.5) ** 2 < 1).astype(np.float32)
    image = (50 + 100 * gland + i + 2 * j + 3 * k).astype(np.float32)
    return Volume(image[None], OBLIQUE), gland


def assert_same_frame(actual: Frame, expected: Frame) -> None:
    np.testing.assert_array_equal(actual.image, expected.image)
    np.testing.assert_array_equal(actual.gland, expected.gland > 0.5)
    np.testing.assert_allclose(actual.pose, expected.pose, atol=1e-12)


def test_frame_round_trips_through_a_single_slice_volume_and_labelmap(mrml_scene, trus):
    image, gland = trus
    sagittal = extract_frame(image, gland, 4)
    volume, labelmap = conversions.frameNodesFromFrame(mrml_scene, sagittal, "frame 1")
    assert volume.GetImageData().GetDimensions()[2] == 1
    assert_same_frame(conversions.frameFromNodes(volume, labelmap), sagittal)
    # A radial (oblique) plane through the volume, with its gland cut from the 3D label.
    centre = apply_affine(OBLIQUE.index_to_world, [4, 3.5, 3])
    axes = OBLIQUE.index_to_world[:3, :3]
    pose = plane_pose(centre - 5 * axes[:, 0] - 4 * axes[:, 2], axes[:, 0] * 0.8, rotation(axes[:, 2], 30) @ axes[:, 2])
    radial = sample_frame(image, gland, pose, (8, 10))
    volume, labelmap = conversions.frameNodesFromFrame(mrml_scene, radial, "frame 2")
    assert_same_frame(conversions.frameFromNodes(volume, labelmap), radial)


def test_frame_gland_can_come_from_a_segmentation_or_the_3d_trus_label(mrml_scene, trus):
    image, gland = trus
    frame = extract_frame(image, gland, 3)
    volume, labelmap = conversions.frameNodesFromFrame(mrml_scene, frame)
    segmentation = segmentation_from_labelmap(mrml_scene, labelmap, "frame segmentation")
    assert_same_frame(conversions.frameFromNodes(volume, segmentation), frame)
    trus_labels = volume_node(mrml_scene, gland.astype(np.uint8), OBLIQUE, "vtkMRMLLabelMapVolumeNode", "TRUS gland")
    assert_same_frame(conversions.frameFromNodes(volume, trus_labels), frame)


def test_tracked_frame_pose_includes_its_linear_parent_transform(mrml_scene, trus):
    image, gland = trus
    frame = extract_frame(image, gland, 4)
    volume, labelmap = conversions.frameNodesFromFrame(mrml_scene, frame)
    tracking_ras = np.eye(4)
    tracking_ras[:3, :3] = rotation((1, 0, 0), 20)
    tracking_ras[:3, 3] = [1.0, 2.0, 3.0]
    tracking = linear_transform_node(mrml_scene, tracking_ras)
    for node in (volume, labelmap):
        node.SetAndObserveTransformNodeID(tracking.GetID())
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    expected = flip @ tracking_ras @ flip @ frame.pose
    tracked = conversions.frameFromNodes(volume, labelmap)
    np.testing.assert_allclose(tracked.pose[:, [0, 1, 3]], expected[:, [0, 1, 3]], atol=1e-12)
    np.testing.assert_array_equal(tracked.gland, frame.gland)


def test_frame_errors_name_the_node(mrml_scene, trus):
    image, gland = trus
    frame = extract_frame(image, gland, 4)
    volume, labelmap = conversions.frameNodesFromFrame(mrml_scene, frame, "frame 7")
    whole = volume_node(mrml_scene, image.array[0], OBLIQUE, name="TRUS 3D")
    with pytest.raises(InputError, match=r"^TRUS 3D: is a 3D volume \(9x8x7 voxels\); a single-slice \(2D\) frame"):
        conversions.frameFromNodes(whole, labelmap)
    with pytest.raises(InputError, match="^frame 7: has no gland segmentation"):
        conversions.frameFromNodes(volume, None)
    _, other_plane = conversions.frameNodesFromFrame(mrml_scene, extract_frame(image, gland, 2), "frame 5")
    with pytest.raises(InputError, match="^frame 5 gland: does not lie on the plane of its frame"):
        conversions.frameFromNodes(volume, other_plane)
    grid_node = mrml_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    conversions.setGridTransform(grid_node, Transform(translation([1, 0, 0])), OBLIQUE)
    volume.SetAndObserveTransformNodeID(grid_node.GetID())
    with pytest.raises(InputError, match="^frame 7: is under the non-linear transform warp"):
        conversions.frameFromNodes(volume, labelmap)


# --- landmarks --------------------------------------------------------------------------------------------------

def fiducials(scene, name, points_ras: dict):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for label, point in points_ras.items():
        node.AddControlPoint(vtk.vtkVector3d(*point), label)
    return node


def test_landmarks_are_matched_by_label_and_converted_to_lps(mrml_scene):
    mr = fiducials(mrml_scene, "MR points", {"apex": (1, 2, 3), "base": (4, 5, 6), "cyst": (7, 8, 9)})
    trus_points = fiducials(mrml_scene, "TRUS points", {"base": (-4, -5, 6), "apex": (-1, -2, 3), "calc": (0, 0, 0)})
    labels, moving, fixed, mr_only, trus_only = conversions.matchLandmarks(mr, trus_points)
    assert labels == ["apex", "base"] and mr_only == ["cyst"] and trus_only == ["calc"]
    np.testing.assert_array_equal(moving, [[-1, -2, 3], [-4, -5, 6]])
    np.testing.assert_array_equal(fixed, [[1, 2, 3], [4, 5, 6]])
    # TRUS points are read in world coordinates, MR points in their own.
    shift = linear_transform_node(mrml_scene, translation([10, 0, 0]))
    for node in (mr, trus_points):
        node.SetAndObserveTransformNodeID(shift.GetID())
    _, moving, fixed, _, _ = conversions.matchLandmarks(mr, trus_points)
    np.testing.assert_array_equal(moving[0], [-1, -2, 3])
    np.testing.assert_array_equal(fixed[0], [-9, 2, 3])  # RAS (-1, -2, 3) + (10, 0, 0)


def test_landmark_errors_name_the_nodes(mrml_scene):
    mr = fiducials(mrml_scene, "MR points", {"a": (1, 2, 3)})
    trus_points = fiducials(mrml_scene, "TRUS points", {"b": (1, 2, 3)})
    with pytest.raises(InputError, match=r"^MR points and TRUS points: no control point label in common "
                                         r"\(MR: a; TRUS: b\)"):
        conversions.matchLandmarks(mr, trus_points)
    twice = fiducials(mrml_scene, "twice", {"a": (0, 0, 0)})
    twice.AddControlPoint(vtk.vtkVector3d(1, 1, 1), "a")
    with pytest.raises(InputError, match="^twice: the label 'a' is used by more than one point"):
        conversions.matchLandmarks(twice, trus_points)


def test_landmarks_round_trip_through_a_mrk_json_file(mrml_scene, tmp_path):
    points = {"apex": np.array([1.5, -2.0, 3.25]), "base": np.array([-4.0, 5.5, 6.0])}
    node = conversions.markupsFromPoints(mrml_scene, points, "written")
    loaded = storage_round_trip(mrml_scene, node, tmp_path / "points.mrk.json")
    read = conversions.pointsFromMarkups(loaded, world=True)
    assert list(read) == ["apex", "base"]
    for label, point in points.items():
        np.testing.assert_allclose(read[label], point, atol=1e-9)


def test_non_finite_geometry_or_points_are_refused_naming_the_node(mrml_scene):
    node = volume_node(mrml_scene, np.ones(OBLIQUE.array_shape, np.float32), OBLIQUE, name="broken MR")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(1, 1, float("nan"))
    node.SetIJKToRASMatrix(matrix)
    with pytest.raises(InputError, match=r"^broken MR: its geometry \(IJK-to-RAS matrix or parent transform\) holds "
                                         "NaN or infinite values$"):
        conversions.volumeFromNode(node)
    points = conversions.markupsFromPoints(mrml_scene, {"A": np.zeros(3)}, "points")
    points.SetNthControlPointPosition(0, 0.0, float("inf"), 0.0)
    with pytest.raises(InputError, match="^points: point 'A' has a NaN or infinite coordinate"):
        conversions.pointsFromMarkups(points, world=True)
