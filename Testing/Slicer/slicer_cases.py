"""Shared by the Logic's tests: a case with a known answer as Slicer nodes, tracked frame nodes, node digests."""

from __future__ import annotations

import collections
import hashlib

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")
import vtk  # noqa: E402

from MetaRegistrationLib.data import Case, Volume  # noqa: E402
from MetaRegistrationLib.geometry import Grid  # noqa: E402
from MetaRegistrationLib.sweep import extract_frame, sweep_positions  # noqa: E402
from MetaRegistrationSlicer import conversions  # noqa: E402
from MetaRegistrationSlicer.logic import MetaRegistrationCoreLogic  # noqa: E402

from conftest import blob  # noqa: E402

SHIFT_LPS = np.array([4.5, -3.0, 1.5])
"""The synthetic MR is its TRUS moved by this: the true phi is x + SHIFT_LPS."""


@pytest.fixture(scope="module")
def shifted_case() -> Case:
    """A case whose MR is its TRUS translated by SHIFT_LPS, on real-data-like axes (RAS-identity directions)."""
    shape = (16, 22, 18)  # (k, j, i)
    gland = (blob(shape, (8, 11, 9), 4.0) > 0.35).astype(np.float32)
    landmarks = [blob(shape, centre, 1.0) for centre in ((6, 9, 8), (10, 13, 10), (8, 10, 12))]
    image = (60 + 120 * gland + 50 * sum(landmarks)).astype(np.float32)
    labels = np.stack([gland, *landmarks])
    direction = np.diag([-1.0, -1.0, 1.0])
    fixed = Grid.from_arrays(shape[::-1], (1.5, 1.5, 1.5), (-1.5, -1.5, 1.5), direction)
    moving = Grid.from_arrays(shape[::-1], (1.5, 1.5, 1.5), np.array(fixed.origin) + SHIFT_LPS, direction)
    return Case("shifted", Volume(image[None], moving, "MR"), Volume(labels, moving, "MR labels"),
                Volume(image[None], fixed, "TRUS"), Volume(labels, fixed, "TRUS labels"))


def frame_nodes(scene, case: Case, count: int | None = None) -> list[tuple]:
    """Tracked frame nodes of a right-to-left sweep: ``count`` frames, or every plane holding gland."""
    gland = case.fixed_labels.array[0]
    if count is None:
        low, high = np.flatnonzero(gland.any(axis=(0, 2)))[[0, -1]]
        count = high - low + 1
    frames = [extract_frame(case.fixed_image, gland, p) for p in sweep_positions(gland, count)]
    return [conversions.frameNodesFromFrame(scene, frame, f"frame {n}") for n, frame in enumerate(frames, 1)]


def checksum(node) -> str:
    """What a node holds, as a digest: voxels and geometry, segments, control points, its parent transform."""
    digest = hashlib.sha256()
    if node.IsA("vtkMRMLVolumeNode"):
        digest.update(slicer.util.arrayFromVolume(node).tobytes())
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        digest.update(conversions.arrayFromMatrix(matrix).tobytes())
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        for n in range(segmentation.GetNumberOfSegments()):
            mask, grid, _ = conversions.labelFromNode(node, segmentation.GetNthSegmentID(n))
            digest.update(mask.tobytes() + repr(grid).encode())
    if node.IsA("vtkMRMLMarkupsNode"):
        digest.update(slicer.util.arrayFromMarkupsControlPoints(node).tobytes())
    if node.IsA("vtkMRMLGridTransformNode") and node.GetTransformFromParent() is not None:
        digest.update(slicer.util.arrayFromGridTransform(node).tobytes())
    digest.update(str(node.GetTransformNodeID() if node.IsA("vtkMRMLTransformableNode") else "").encode())
    return digest.hexdigest()


def node_classes(scene) -> collections.Counter:
    return collections.Counter(scene.GetNthNode(n).GetClassName() for n in range(scene.GetNumberOfNodes()))


def world_points(markups) -> np.ndarray:
    return np.array([markups.GetNthControlPointPositionWorld(n) for n in range(markups.GetNumberOfControlPoints())])


def started(scene, nodes, model, **kwargs) -> MetaRegistrationCoreLogic:
    logic = MetaRegistrationCoreLogic(scene)
    logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=str(model), **kwargs)
    return logic


class SimulatedStream:
    """A PLUS/OpenIGTLink stream as OpenIGTLinkIF delivers it: one frame node (and its gland labelmap) whose
    pixels and ``ImageToReference`` transform are updated in place, under a fixed ``ReferenceToRAS``.

    Frame ``n`` of ``count`` is the sagittal plane swept linearly from just past the gland's highest j to just
    past its lowest (the right-to-left sweep), with a random tracker jitter of ``jitter_mm`` per axis and
    ``jitter_degrees`` about each axis; its pixels are cut from the TRUS volume at that pose.
    """

    def __init__(self, scene, case: Case, count: int = 60, jitter_mm: float = 0.3, jitter_degrees: float = 0.3,
                 seed: int = 0):
        from MetaRegistrationLib.geometry import LPS_TO_RAS
        from MetaRegistrationLib.igtl import simulated_sweep_poses
        from MetaRegistrationLib.sweep import DEPTH_AXIS, PROBE_AXIS

        self.case, self.count = case, count
        grid = case.fixed_image.grid
        self.shape = (grid.size[PROBE_AXIS], grid.size[DEPTH_AXIS])
        self.poses = simulated_sweep_poses(case, count, jitter_mm, jitter_degrees, seed)
        spacing = np.linalg.norm(self.poses[0][:3, :2], axis=0)
        self._pixelToImage = np.diag([spacing[0], spacing[1], 1.0, 1.0])  # the frame node's own IJK-to-RAS
        self._lpsToRas = LPS_TO_RAS
        self.referenceToRas = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ReferenceToRAS")
        self.referenceToRas.SetMatrixTransformToParent(conversions.matrixFromArray(
            np.array([[1, 0, 0, 2.0], [0, 1, 0, -1.0], [0, 0, 1, 0.5], [0, 0, 0, 1]])))
        self.imageToReference = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ImageToReference")
        self.imageToReference.SetAndObserveTransformNodeID(self.referenceToRas.GetID())
        self.frameNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
        self.glandNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Image_Reference gland")
        for node, dtype in ((self.frameNode, np.float32), (self.glandNode, np.uint8)):
            slicer.util.updateVolumeFromArray(node, np.zeros((1, *self.shape), dtype=dtype))
            node.SetIJKToRASMatrix(conversions.matrixFromArray(self._pixelToImage))
            node.SetAndObserveTransformNodeID(self.imageToReference.GetID())
        self.show(0)

    def frame(self, n: int):
        from MetaRegistrationLib.sweep import sample_frame

        return sample_frame(self.case.fixed_image, self.case.fixed_labels.array[0], self.poses[n], self.shape)

    def show(self, n: int) -> None:
        """Frame ``n`` arrives: pixels and gland in place, then the transform (two messages, as over the wire)."""
        frame = self.frame(n)
        for node, values in ((self.frameNode, frame.image), (self.glandNode, frame.gland > 0.5)):
            slicer.util.arrayFromVolume(node)[0] = values
            slicer.util.arrayFromVolumeModified(node)
        matrix = vtk.vtkMatrix4x4()
        self.referenceToRas.GetMatrixTransformToParent(matrix)
        referenceToRas = conversions.arrayFromMatrix(matrix)
        imageToRas = self._lpsToRas @ self.poses[n] @ np.linalg.inv(self._pixelToImage)
        self.imageToReference.SetMatrixTransformToParent(
            conversions.matrixFromArray(np.linalg.inv(referenceToRas) @ imageToRas))

