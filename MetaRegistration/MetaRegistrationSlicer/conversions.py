"""Slicer nodes <-> library objects: the only place where RAS meets LPS.

Slicer side: millimetres in **RAS**; a volume node's IJK-to-RAS matrix maps a
voxel index ``(i, j, k, 1)`` to RAS and ``slicer.util.arrayFromVolume`` returns
``(k, j, i)`` arrays. Library side (:mod:`MetaRegistrationLib.geometry`): LPS,
``Grid.index_to_world`` maps ``(i, j, k, 1)`` to LPS, arrays ``(C, k, j, i)``.
``LPS_TO_RAS = diag(-1, -1, 1, 1)`` is its own inverse, so a node's geometry
becomes ``index_to_world = LPS_TO_RAS @ IJKToRAS``, a point ``lps = ras * (-1, -1, 1)``
and the voxel order is unchanged.

Which coordinates a node is read in:

- MR side (moving volume, its segmentation, its fiducials): the node's own
  coordinates. A parent transform, such as this module's output made the MR's
  parent to show the overlay, is ignored, so the MR reads the same before and
  after the overlay.
- TRUS side (TRUS volume, tracked frames, their segmentations, TRUS fiducials):
  world coordinates. A linear parent transform (a frame's tracking) is applied;
  a non-linear one is refused.

Transform direction. The library's ``phi`` maps a TRUS world point to the MR
point showing the same tissue (the resampling direction). Slicer resamples a
volume under a transform node at ``FromParent(x)`` for every world point ``x``
and carries a child's points to the world with ``ToParent``. So ``phi`` is
stored as the node's **TransformFromParent**: a ``vtkOrientedGridTransform`` on
the TRUS grid holding ``phi_ras(x) - x`` (RAS mm). Made the parent of the MR
volume, its segmentation and its fiducials, the node shows ``MR(phi(x))`` at
each TRUS point ``x``, and hardening moves MR points by ``ToParent = phi^-1``
onto the TRUS. ``Testing/Slicer/test_conversions.py`` checks both with a known
shift.
"""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
from MetaRegistrationLib.data import Volume
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.geometry import LPS_TO_RAS, Grid, Transform, apply_affine, resample
from MetaRegistrationLib.metrics import landmark_centroids
from MetaRegistrationLib.sweep import Frame, frame_intensity, plane_pose

GLAND_SEGMENT_NAMES = ("prostate", "gland")
"""Segment names (case-insensitive) taken as the gland when a segmentation holds several segments."""

_FLIP = np.array([-1.0, -1.0, 1.0])


class EmptyGlandError(InputError):
    """A frame's gland label holds no gland on the frame (a plane beside the gland): live tracking skips it."""


# --- points and matrices ----------------------------------------------------------------------------------------


def rasToLps(points) -> np.ndarray:
    """RAS points (..., 3) as LPS (the same flip both ways)."""
    return np.asarray(points, dtype=float) * _FLIP


lpsToRas = rasToLps


def nodeName(node) -> str:
    """A node's name for messages (its ID when it has no name)."""
    return node.GetName() or node.GetID() or node.GetClassName()


def arrayFromMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a (4, 4) array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def matrixFromArray(array) -> vtk.vtkMatrix4x4:
    """A (4, 4) array-like as a vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def localToWorld(node, world: bool) -> np.ndarray:
    """The 4x4 RAS matrix from a node's own coordinates to the coordinates it is read in (see module docstring).

    Raises:
        InputError: if ``world`` and the node is under a non-linear transform.
    """
    parent = node.GetParentTransformNode() if world else None
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"{nodeName(node)}: is under the non-linear transform {nodeName(parent)}; "
                         "only a linear (tracking) transform can be applied to it: harden or remove it")
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return arrayFromMatrix(matrix)


def gridFromIndexToWorld(size, indexToWorld: np.ndarray, source: str = "geometry") -> Grid:
    """The library grid of ``size`` (i, j, k) voxels whose LPS index-to-world matrix is ``indexToWorld``.

    Raises:
        InputError: naming ``source`` for a NaN or infinite matrix or a zero-length voxel axis.
    """
    if not np.isfinite(np.asarray(indexToWorld, dtype=float)).all():
        raise InputError(f"{source}: its geometry (IJK-to-RAS matrix or parent transform) holds NaN or infinite "
                         "values")
    columns = np.asarray(indexToWorld, dtype=float)[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing == 0):
        raise InputError(f"{source}: a voxel axis has zero length ({np.round(indexToWorld, 4).tolist()})")
    return Grid.from_arrays(size, spacing, indexToWorld[:3, 3], columns / spacing)


def rasIndexToWorld(grid: Grid) -> np.ndarray:
    """A library grid's voxel index -> RAS matrix: the IJK-to-RAS of a node on that grid."""
    return LPS_TO_RAS @ grid.index_to_world


# --- volumes ----------------------------------------------------------------------------------------------------


def _imageArray(volumeNode, components: bool = False) -> np.ndarray:
    """A volume node's voxels (k, j, i), or (k, j, i, C) when ``components`` (a vector volume: RGB frames)."""
    image = volumeNode.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{nodeName(volumeNode)}: holds no image data")
    count = image.GetNumberOfScalarComponents()
    if count != 1 and not components:
        raise InputError(f"{nodeName(volumeNode)}: has {count} components per voxel; a scalar volume is expected")
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    shape = tuple(reversed(image.GetDimensions())) + ((count,) if components else ())
    return scalars.reshape(shape).copy()


def _nodeIndexToWorld(volumeNode, world: bool) -> np.ndarray:
    """LPS index-to-world of a volume node (read in its own or world coordinates)."""
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    return LPS_TO_RAS @ localToWorld(volumeNode, world) @ arrayFromMatrix(ijkToRas)


def gridFromVolumeNode(volumeNode, world: bool = False) -> Grid:
    """The library grid of a volume node."""
    image = volumeNode.GetImageData()
    if image is None:
        raise InputError(f"{nodeName(volumeNode)}: holds no image data")
    return gridFromIndexToWorld(image.GetDimensions(), _nodeIndexToWorld(volumeNode, world), nodeName(volumeNode))


def volumeFromNode(volumeNode, world: bool = False) -> Volume:
    """A 3D scalar volume node as a library :class:`Volume` ``(1, k, j, i)`` float32.

    Raises:
        InputError: naming the node if it is empty, not scalar, not 3D or not finite.
    """
    if volumeNode is None:
        raise InputError("no volume given")
    array = _imageArray(volumeNode).astype(np.float32)
    if min(array.shape) < 2:
        raise InputError(f"{nodeName(volumeNode)}: is a single-slice image "
                         f"({'x'.join(map(str, array.shape[::-1]))} voxels); a 3D volume is expected")
    if not np.isfinite(array).all():
        raise InputError(f"{nodeName(volumeNode)}: contains NaN or infinite values")
    return Volume(array[None], gridFromVolumeNode(volumeNode, world), nodeName(volumeNode))


def updateVolumeNode(volumeNode, array: np.ndarray, grid: Grid) -> None:
    """Set a volume node's voxels ``(k, j, i)`` and its geometry from a library grid."""
    array = np.ascontiguousarray(array)
    if tuple(array.shape) != grid.array_shape:
        raise ValueError(f"array must be {grid.array_shape} (k, j, i) for grid {grid.describe()}, got {array.shape}")
    slicer.util.updateVolumeFromArray(volumeNode, array)
    volumeNode.SetIJKToRASMatrix(matrixFromArray(rasIndexToWorld(grid)))


# --- labels: labelmap volume nodes and segmentation nodes ------------------------------------------------------


def segmentIdOf(segmentationNode, segmentId: str | None = None) -> str:
    """The segment to read: ``segmentId`` (an ID or a name), the only segment, or one named like the gland.

    Raises:
        InputError: naming the node when the segment is missing or the choice is ambiguous.
    """
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    names = [segmentation.GetSegment(i).GetName() for i in ids]
    if not ids:
        raise InputError(f"{nodeName(segmentationNode)}: has no segment")
    if segmentId:
        if segmentId in ids:
            return segmentId
        if segmentId in names:
            return ids[names.index(segmentId)]
        raise InputError(f"{nodeName(segmentationNode)}: has no segment {segmentId!r} (it has {', '.join(names)})")
    if len(ids) == 1:
        return ids[0]
    glands = [i for i, name in zip(ids, names) if name.strip().lower() in GLAND_SEGMENT_NAMES]
    if len(glands) == 1:
        return glands[0]
    raise InputError(f"{nodeName(segmentationNode)}: has {len(ids)} segments ({', '.join(names)}); "
                     f"choose the gland segment or name it {' or '.join(GLAND_SEGMENT_NAMES)!r}")


def _padded(mask: np.ndarray, grid: Grid) -> tuple[np.ndarray, Grid]:
    """The mask with one empty voxel added on every side, and its grid.

    Sampling clamps to an axis of one voxel (a 2D frame's label, a segment's
    one-slice extent), which would make the label infinitely thick: the empty
    border makes every point beyond half a voxel read 0.
    """
    origin = grid.index_to_world[:3, :3] @ -np.ones(3) + np.asarray(grid.origin)
    padded = Grid.from_arrays(np.asarray(grid.size) + 2, grid.spacing, origin, grid.direction)
    return np.pad(mask, 1), padded


def labelFromNode(labelNode, segmentId: str | None = None, world: bool = False) -> tuple[np.ndarray, Grid, str]:
    """A label as stored: ``(mask (k, j, i) bool, its grid, description)``, padded by one empty voxel on
    every side (see :func:`_padded`).

    ``labelNode`` is a segmentation node (the segment :func:`segmentIdOf` picks) or a
    labelmap volume node (every voxel above 0, or the label value ``segmentId`` if given).
    """
    if labelNode is None:
        raise InputError("no segmentation given")
    if labelNode.IsA("vtkMRMLSegmentationNode"):
        segment = segmentIdOf(labelNode, segmentId)
        image = slicer.vtkOrientedImageData()
        ok = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            labelNode, segment, image, False)
        name = labelNode.GetSegmentation().GetSegment(segment).GetName()
        description = f"{nodeName(labelNode)} (segment {name!r})"
        if not ok:
            raise InputError(f"{description}: has no binary labelmap representation "
                             "(create it in the Segmentations module)")
        extent = image.GetExtent()
        size = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
        if min(size) < 1 or image.GetPointData().GetScalars() is None:
            raise InputError(f"{description}: is empty")
        # A segment may share its labelmap with others: its voxels are those holding its label value.
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(size[::-1])
        mask = values == labelNode.GetSegmentation().GetSegment(segment).GetLabelValue()
        imageToWorld = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(imageToWorld)
        # The stored extent need not start at 0: the grid's origin is its first voxel.
        indexToRas = arrayFromMatrix(imageToWorld)
        indexToRas[:3, 3] = indexToRas[:3, :3] @ np.array(extent[::2], dtype=float) + indexToRas[:3, 3]
        indexToWorld = LPS_TO_RAS @ localToWorld(labelNode, world) @ indexToRas
        return (*_padded(mask, gridFromIndexToWorld(size, indexToWorld, description)), description)
    if labelNode.IsA("vtkMRMLVolumeNode"):
        values = _imageArray(labelNode)
        mask = values > 0 if segmentId is None else values == float(segmentId)
        return (*_padded(mask, gridFromVolumeNode(labelNode, world)), nodeName(labelNode))
    raise InputError(f"{nodeName(labelNode)}: is a {labelNode.GetClassName()}; a segmentation or a labelmap "
                     "volume is expected")


def glandOnGrid(labelNode, grid: Grid, segmentId: str | None = None, world: bool = False,
                role: str = "gland") -> np.ndarray:
    """A label node's gland on ``grid`` (nearest neighbour), ``(k, j, i)`` float32 of 0 and 1.

    Raises:
        InputError: naming the node if the gland is empty on ``grid``.
    """
    mask, labelGrid, description = labelFromNode(labelNode, segmentId, world)
    if not mask.any():
        raise InputError(f"{description}: the {role} is empty")
    gland = resample(mask.astype(np.float32), labelGrid, Transform(np.eye(4)), grid, mode="nearest") > 0.5
    gland = gland.astype(np.float32)
    if not gland.any():
        raise InputError(f"{description}: the {role} does not overlap the reference geometry ({grid.describe()})")
    return gland


def segmentationFromMask(segmentationNode, mask: np.ndarray, grid: Grid, segmentName: str,
                         color=(0.9, 0.5, 0.2)) -> str:
    """Replace (or create) the segment ``segmentName`` of a segmentation node with a mask ``(k, j, i)`` on ``grid``;
    returns its segment ID."""
    image = slicer.vtkOrientedImageData()
    k, j, i = grid.array_shape
    image.SetExtent(0, i - 1, 0, j - 1, 0, k - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.asarray(mask, dtype=np.uint8).ravel()
    image.SetImageToWorldMatrix(matrixFromArray(rasIndexToWorld(grid)))
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(segmentName)
    if not segmentId:
        segmentId = segmentation.AddEmptySegment("", segmentName, list(color))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, logic.MODE_REPLACE):
        raise RuntimeError(f"{nodeName(segmentationNode)}: could not write segment {segmentName!r}")
    return segmentId


# --- tracked frames ---------------------------------------------------------------------------------------------


def _frameAxes(volumeNode) -> tuple[int, int]:
    """The two in-plane voxel axes (u, v) of a single-slice volume node.

    Raises:
        InputError: if the node is not a single-slice 2D image.
    """
    image = volumeNode.GetImageData()
    if image is None:
        raise InputError(f"{nodeName(volumeNode)}: holds no image data")
    dims = image.GetDimensions()
    inPlane = [axis for axis in range(3) if dims[axis] > 1]
    if len(inPlane) == 3:
        raise InputError(f"{nodeName(volumeNode)}: is a 3D volume ({'x'.join(map(str, dims))} voxels); "
                         "a single-slice (2D) frame is expected")
    if len(inPlane) < 2:
        raise InputError(f"{nodeName(volumeNode)}: has {'x'.join(map(str, dims))} voxels; a 2D frame is expected")
    return inPlane[0], inPlane[1]


def frameGrid(frame: Frame) -> Grid:
    """A frame's pixels as a one-voxel-thick library grid (i = u, j = v, k = the normal)."""
    rows, columns = frame.shape
    return gridFromIndexToWorld((columns, rows, 1), frame.pose)


def framePixelsFromNode(frameVolumeNode) -> tuple[np.ndarray, np.ndarray]:
    """A tracked frame's intensities (V, U) float32 and its pose (4, 4, as :class:`Frame`) in TRUS world LPS.

    The frame is a single-slice volume placed in 3D by its IJK-to-RAS and every linear transform above it (a
    tracked probe's ``ImageToReference``, and that transform's parents). A vector volume (RGB or RGBA, as
    OpenIGTLink delivers some devices' images) becomes its luma (:func:`~MetaRegistrationLib.sweep.frame_intensity`).

    Raises:
        InputError: naming the node for a missing or 3D image, NaN values or pose, a non-linear parent, or pixels
            of another number of components.
    """
    if frameVolumeNode is None:
        raise InputError("no frame image given")
    if not frameVolumeNode.IsA("vtkMRMLScalarVolumeNode") or frameVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{nodeName(frameVolumeNode)}: is a {frameVolumeNode.GetClassName()}; "
                         "a frame is a scalar (or RGB vector) volume node")
    uAxis, vAxis = _frameAxes(frameVolumeNode)
    values = _imageArray(frameVolumeNode, components=True).astype(np.float32)
    # The array is (k, j, i, C); array axis 2 - a holds voxel axis a. Rows are v, columns u.
    try:
        image = frame_intensity(np.squeeze(values, axis=2 - (3 - uAxis - vAxis)))
    except InputError as error:
        raise InputError(f"{nodeName(frameVolumeNode)}: {error}") from None
    indexToWorld = _nodeIndexToWorld(frameVolumeNode, world=True)
    if not np.isfinite(image).all():
        raise InputError(f"{nodeName(frameVolumeNode)}: contains NaN or infinite values")
    if not np.isfinite(indexToWorld).all():
        raise InputError(f"{nodeName(frameVolumeNode)}: its pose (IJK-to-RAS matrix or tracking transform) holds "
                         "NaN or infinite values")
    return image, plane_pose(indexToWorld[:3, 3], indexToWorld[:3, uAxis], indexToWorld[:3, vAxis])


def frameFromNodes(frameVolumeNode, frameLabelNode, segmentId: str | None = None) -> Frame:
    """A tracked frame (:func:`framePixelsFromNode`) and its gland label (segmentation or labelmap) as a library
    :class:`Frame` in TRUS world LPS.

    Raises:
        InputError: naming the node for a 3D volume, an empty image, an empty gland, or a label not on the frame.
    """
    if frameVolumeNode is not None and frameLabelNode is None:
        raise InputError(f"{nodeName(frameVolumeNode)}: has no gland segmentation")
    image, pose = framePixelsFromNode(frameVolumeNode)
    gland = glandOnFrame(frameLabelNode, Frame(image, np.zeros_like(image), pose), segmentId)
    return Frame(image, gland, pose)


def glandOnFrame(labelNode, frame: Frame, segmentId: str | None = None) -> np.ndarray:
    """The gland of a label node on a frame's pixels, ``(V, U)``; the label may be 2D (on the frame's plane)
    or 3D (e.g. a segmentation of the whole TRUS volume)."""
    mask, labelGrid, description = labelFromNode(labelNode, segmentId, world=True)
    if 3 in labelGrid.size:
        # A one-slice label (3 voxels with the padding) must lie on the frame's plane.
        inPlane = [axis for axis in range(3) if axis != labelGrid.size.index(3)]
        directions = np.asarray(labelGrid.direction)
        normal = np.cross(directions[:, inPlane[0]], directions[:, inPlane[1]])
        normal /= np.linalg.norm(normal)
        stored = apply_affine(labelGrid.index_to_world, np.ones(3))  # the first stored voxel, inside the padding
        offset = abs(float((stored - frame.pose[:3, 3]) @ frame.normal))
        if abs(abs(float(normal @ frame.normal)) - 1.0) > 1e-3 or offset > 0.5 * min(frame.spacing):
            raise InputError(f"{description}: does not lie on the plane of its frame "
                             f"(offset {offset:.2f} mm); give the frame's own segmentation")
    grid = frameGrid(frame)
    if not mask.any():
        raise EmptyGlandError(f"{description}: the gland is empty on this frame")
    gland = resample(mask.astype(np.float32), labelGrid, Transform(np.eye(4)), grid, mode="nearest")[0] > 0.5
    if not gland.any():
        raise EmptyGlandError(f"{description}: holds no gland pixel on the plane of its frame")
    return gland.astype(np.float32)


def frameNodesFromFrame(scene, frame: Frame, name: str = "Frame") -> tuple:
    """New nodes for a library frame: a single-slice scalar volume and its gland labelmap (for simulated sweeps
    and tests). The inverse of :func:`frameFromNodes`."""
    rows, columns = frame.shape
    indexToWorld = frame.pose.copy()
    ijkToRas = matrixFromArray(LPS_TO_RAS @ indexToWorld)
    nodes = []
    for className, suffix, array in (("vtkMRMLScalarVolumeNode", "", frame.image),
                                     ("vtkMRMLLabelMapVolumeNode", " gland", (frame.gland > 0.5).astype(np.uint8))):
        node = scene.AddNewNodeByClass(className, name + suffix)
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array).reshape(1, rows, columns))
        node.SetIJKToRASMatrix(ijkToRas)
        nodes.append(node)
    return tuple(nodes)


# --- landmarks --------------------------------------------------------------------------------------------------


def pointsFromMarkups(markupsNode, world: bool) -> dict[str, np.ndarray]:
    """A markups node's placed control points as ``{label: LPS point (3,)}``.

    Raises:
        InputError: naming the node for a repeated label or a point with a NaN or infinite coordinate.
    """
    if markupsNode is None:
        raise InputError("no landmark (markups) node given")
    points: dict[str, np.ndarray] = {}
    position = [0.0, 0.0, 0.0]
    for n in range(markupsNode.GetNumberOfControlPoints()):
        if markupsNode.GetNthControlPointPositionStatus(n) != markupsNode.PositionDefined:
            continue
        label = markupsNode.GetNthControlPointLabel(n).strip()
        if label in points:
            raise InputError(f"{nodeName(markupsNode)}: the label {label!r} is used by more than one point; "
                             "labels pair MR and TRUS points, so each must be unique")
        if world:
            markupsNode.GetNthControlPointPositionWorld(n, position)
        else:
            markupsNode.GetNthControlPointPosition(n, position)
        if not np.isfinite(position).all():
            raise InputError(f"{nodeName(markupsNode)}: point {label!r} has a NaN or infinite coordinate "
                             f"({list(position)})")
        points[label] = rasToLps(position)
    return points


def matchLandmarks(movingMarkups, fixedMarkups) -> tuple[list[str], np.ndarray, np.ndarray, list[str], list[str]]:
    """Pair MR (own coordinates) and TRUS (world) control points by label.

    Returns:
        (labels, moving points (N, 3), fixed points (N, 3) in LPS, MR-only labels, TRUS-only labels),
        labels in the MR node's order.

    Raises:
        InputError: naming both nodes when no label is shared.
    """
    moving = pointsFromMarkups(movingMarkups, world=False)
    fixed = pointsFromMarkups(fixedMarkups, world=True)
    labels = [label for label in moving if label in fixed]
    movingOnly = [label for label in moving if label not in fixed]
    fixedOnly = [label for label in fixed if label not in moving]
    if not labels:
        raise InputError(f"{nodeName(movingMarkups)} and {nodeName(fixedMarkups)}: no control point label in common "
                         f"(MR: {', '.join(movingOnly) or 'none'}; TRUS: {', '.join(fixedOnly) or 'none'})")
    return (labels, np.array([moving[label] for label in labels]), np.array([fixed[label] for label in labels]),
            movingOnly, fixedOnly)


def markupsFromPoints(scene, points: dict[str, np.ndarray], name: str):
    """A new markups fiducial node holding LPS points by label."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for label, point in points.items():
        node.AddControlPoint(vtk.vtkVector3d(*lpsToRas(point)), label)
    return node


# --- a whole case ------------------------------------------------------------------------------------------------


def headlessScene() -> tuple:
    """A new MRML scene set up as 3D Slicer sets up its own, for ``slicer-core`` without the application
    (benchmarks, tests): the application logic and the module logics this module relies on (segmentations, whose
    creation registers the segmentation converter rules, transforms, markups, sequences: stepping a browser updates
    its proxy nodes).

    Returns:
        ``(scene, logics)``: keep ``logics`` referenced as long as the scene is used.
    """
    scene = slicer.vtkMRMLScene()
    application = slicer.vtkMRMLApplicationLogic()
    application.SetMRMLScene(scene)
    logics = [application, slicer.vtkSlicerSegmentationsModuleLogic(), slicer.vtkSlicerTransformLogic(),
              slicer.vtkSlicerMarkupsLogic(), slicer.vtkSlicerSequencesLogic()]
    for logic in logics[1:]:
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
    return scene, logics



def caseNodes(scene, case) -> dict:
    """New nodes holding a library ``Case`` as a clinician would have it (simulations, the web app, tests).

    Returns:
        ``{"MR", "TRUS"}``: scalar volumes; ``"MR segmentation"``, ``"TRUS segmentation"``: the gland as a
        segmentation (segment "prostate"); ``"MR labelmap"``, ``"TRUS labelmap"``: the gland as a labelmap;
        ``"MR points"``, ``"TRUS points"``: fiducials at the centroids of the landmark labels, labelled L1, L2, ...
    """
    nodes = {}
    for side, image, labels in (("MR", case.moving_image, case.moving_labels),
                                ("TRUS", case.fixed_image, case.fixed_labels)):
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", side)
        updateVolumeNode(volume, image.array[0], image.grid)
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{side} gland labelmap")
        updateVolumeNode(labelmap, (labels.array[0] > 0.5).astype(np.uint8), labels.grid)
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{side} segmentation")
        segmentationFromMask(segmentation, labels.array[0] > 0.5, labels.grid, "prostate", (0.9, 0.5, 0.2))
        points = {f"L{n}": point for n, point in enumerate(landmark_centroids(labels), 1)}
        nodes.update({side: volume, f"{side} labelmap": labelmap, f"{side} segmentation": segmentation,
                      f"{side} points": markupsFromPoints(scene, points, f"{side} landmarks")})
    return nodes


# --- transforms -------------------------------------------------------------------------------------------------


def gridTransformFrom(transform: Transform, grid: Grid | None = None) -> vtk.vtkAbstractTransform:
    """``phi`` (TRUS world -> MR) as a ``vtkOrientedGridTransform`` sampled on ``grid`` (default: the grid of the
    transform's displacement), to be a node's TransformFromParent (see the module docstring)."""
    grid = grid or transform.grid
    if grid is None:
        raise ValueError("an affine transform needs the grid to sample it on")
    points = grid.world_points()
    displacement = np.ascontiguousarray(lpsToRas(transform.map_grid(grid) - points).reshape(-1, 3))
    image = vtk.vtkImageData()
    image.SetDimensions(*grid.size)
    image.SetSpacing(*grid.spacing)
    image.SetOrigin(*lpsToRas(grid.origin))
    vectors = numpy_support.numpy_to_vtk(displacement, deep=True, array_type=vtk.VTK_DOUBLE)
    vectors.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(vectors)
    direction = np.eye(4)
    direction[:3, :3] = LPS_TO_RAS[:3, :3] @ np.asarray(grid.direction)
    gridTransform = slicer.vtkOrientedGridTransform()
    gridTransform.SetDisplacementGridData(image)
    gridTransform.SetGridDirectionMatrix(matrixFromArray(direction))
    gridTransform.SetInterpolationModeToLinear()
    return gridTransform


def setGridTransform(transformNode, transform: Transform, grid: Grid | None = None) -> None:
    """Store ``phi`` (TRUS world -> MR) in a transform node as its TransformFromParent, sampled on ``grid``
    (default: the grid of the transform's displacement)."""
    transformNode.SetAndObserveTransformFromParent(gridTransformFrom(transform, grid))


def transformFromNode(transformNode, grid: Grid) -> Transform:
    """The mapping a transform node applies to its children (world -> node coordinates, i.e. ``phi`` when the
    node is the MR's parent) as a library transform sampled on ``grid``.

    Exact at the voxels of ``grid`` for any transform node; for a grid transform on
    the same grid (this module's output) exact everywhere inside it.
    """
    if transformNode is None:
        raise InputError("no transform given")
    general = vtk.vtkGeneralTransform()
    transformNode.GetTransformFromWorld(general)
    points = lpsToRas(grid.world_points().reshape(-1, 3))
    source = vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points), deep=True, array_type=vtk.VTK_DOUBLE))
    target = vtk.vtkPoints()
    target.SetDataTypeToDouble()
    general.TransformPoints(source, target)
    mapped = numpy_support.vtk_to_numpy(target.GetData()).astype(float)
    displacement = rasToLps(mapped - points).reshape(*grid.array_shape, 3)
    return Transform(np.eye(4), np.moveaxis(displacement, -1, 0), grid)
