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
