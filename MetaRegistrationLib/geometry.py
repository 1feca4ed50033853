"""The project's one coordinate convention, and everything that maps points or samples images.

World coordinates
    Millimetres in **LPS** (ITK, DICOM and SimpleITK): +x towards the patient's left,
    +y posterior, +z superior. Every file read by :mod:`MetaRegistrationLib.data` is
    in LPS because SimpleITK reports it so (a NIfTI file's RAS affine is converted
    on reading). 3D Slicer works in RAS: ``ras = LPS_TO_RAS @ lps`` with
    ``LPS_TO_RAS = diag(-1, -1, 1)``. The Slicer module converts at its boundary and
    nowhere else.

Voxel indices and arrays
    A continuous voxel index is ``(i, j, k)`` in ITK order, and
    ``world = origin + direction @ diag(spacing) @ (i, j, k)``.
    Arrays hold volumes as ``(C, k, j, i)`` = torch's ``(C, D, H, W)``, which is
    the order ``SimpleITK.GetArrayFromImage`` returns. A displacement field is an
    array ``(3, k, j, i)`` whose three channels are world-axis components
    ``(x, y, z)`` in mm (not array-axis order, not voxels).

Transforms
    A registration result is the map ``phi`` from a *fixed* (TRUS) world point to
    the *moving* (MR) world point that shows the same tissue. This is the
    resampling direction: the MR warped onto the TRUS grid is ``MR(phi(x))`` for
    every fixed voxel ``x``. It is also ITK's transform direction, so ``phi``
    written as an ITK transform resamples the MR correctly, and in Slicer it is the
    transform node's "FromParent" when the node is the MR's parent (the "ToParent",
    its inverse, carries MR points onto the TRUS).

    ``phi(x) = A @ (x + u(x))``: ``A`` is the initial alignment, a 4x4 homogeneous
    matrix from fixed world to moving world, and ``u`` is the dense displacement
    (mm, world axes) predicted on the fixed grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Homogeneous matrix taking LPS world points to Slicer's RAS (it is its own inverse)."""


@dataclass(frozen=True)
class Grid:
    """The physical geometry of a 3D image: where each voxel centre lies in the world.

    Attributes:
        size: number of voxels along (i, j, k).
        spacing: voxel size in mm along (i, j, k).
        origin: world position (LPS, mm) of voxel (0, 0, 0).
        direction: 3x3 matrix whose columns are the world directions of i, j and k.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]

    @classmethod
    def from_arrays(cls, size, spacing, origin, direction=None) -> Grid:
        """Build a grid from array-likes; ``direction`` is a 3x3 matrix (columns = axes), identity if omitted."""
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
        return cls(
            size=tuple(int(n) for n in size),
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in origin),
            direction=tuple(tuple(float(v) for v in row) for row in direction),
        )

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """The (k, j, i) shape of an array holding one channel on this grid."""
        return self.size[::-1]

    @property
    def index_to_world(self) -> np.ndarray:
        """4x4 matrix from continuous (i, j, k, 1) to world (x, y, z, 1)."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.direction) @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    @property
    def world_to_index(self) -> np.ndarray:
        """4x4 matrix from world (x, y, z, 1) to continuous (i, j, k, 1)."""
        return np.linalg.inv(self.index_to_world)

    def world_points(self) -> np.ndarray:
        """World coordinates of every voxel centre, shape (k, j, i, 3); read-only, computed once per grid
        (every adaptation step warps through it)."""
        return _world_points(self)

    def fov_centre(self) -> np.ndarray:
        """World position of the centre of the field of view, shape (3,)."""
        return apply_affine(self.index_to_world, (np.asarray(self.size) - 1) / 2.0)

    def describe(self) -> str:
        """A short human-readable summary for messages."""
        return f"{self.size[0]}x{self.size[1]}x{self.size[2]} voxels of " + "x".join(
            f"{s:g}" for s in self.spacing
        ) + " mm"


@functools.lru_cache(maxsize=8)
def _world_points(grid: Grid) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.array_shape), indexing="ij")
    points = apply_affine(grid.index_to_world, np.stack([i, j, k], axis=-1).astype(float))
    points.flags.writeable = False
    return points


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 homogeneous matrix to points of shape (..., 3)."""
    points = np.asarray(points, dtype=float)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def translation(offset) -> np.ndarray:
    """The 4x4 matrix of a translation by ``offset`` (3,) in mm."""
    matrix = np.eye(4)
    matrix[:3, 3] = np.asarray(offset, dtype=float)
    return matrix


def weighted_centroid(volume: np.ndarray, grid: Grid) -> np.ndarray:
    """Intensity-weighted centroid, in world mm, of a non-negative volume (k, j, i).

    Raises:
        InputError: if the volume has no positive weight.
    """
    weights = np.clip(np.asarray(volume, dtype=float), 0.0, None)
    total = weights.sum()
    if total <= 0:
        raise InputError("the volume is empty: no voxel has a positive value")
    k, j, i = (np.arange(n, dtype=float) for n in weights.shape)
    index = np.array(
        [
            (weights.sum(axis=(0, 1)) * i).sum(),
            (weights.sum(axis=(0, 2)) * j).sum(),
            (weights.sum(axis=(1, 2)) * k).sum(),
        ]
    ) / total
    return apply_affine(grid.index_to_world, index)


def sample(volumes: torch.Tensor, world_to_index: torch.Tensor, points: torch.Tensor, mode: str = "bilinear",
           padding_mode: str = "zeros") -> torch.Tensor:
    """Sample volumes at world points (trilinear by default); differentiable in both.

    This is the project's one spatial transformer: warping images and labels in
    training and evaluation, and interpolating displacement fields at points, all
    go through it.

    Args:
        volumes: (B, C, k, j, i) values on a grid.
        world_to_index: (4, 4) matrix of that grid (``Grid.world_to_index``).
        points: (B, *S, 3) world points (x, y, z) in mm.
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        padding_mode: value outside the grid: ``"zeros"`` or ``"border"``.

    Returns:
        (B, C, *S) sampled values.
    """
    if volumes.dim() != 5:
        raise ValueError(f"volumes must be (B, C, k, j, i), got shape {tuple(volumes.shape)}")
    if points.shape[0] != volumes.shape[0] or points.shape[-1] != 3:
        raise ValueError(
            f"points must be (B={volumes.shape[0]}, ..., 3), got shape {tuple(points.shape)}"
        )
    batch, channels = volumes.shape[:2]
    out_shape = points.shape[1:-1]
    matrix = world_to_index.to(points)
    index = points.reshape(batch, -1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
    # grid_sample wants (x, y, z) = (i, j, k) normalised to [-1, 1] over voxel centres.
    extent = torch.tensor([max(n - 1, 1) for n in volumes.shape[:1:-1]], dtype=index.dtype, device=index.device)
    normalised = 2.0 * index / extent - 1.0
    sampled = F.grid_sample(
        volumes.to(normalised.dtype),
        normalised.reshape(batch, 1, 1, -1, 3),
        mode=mode,
        padding_mode=padding_mode,
        align_corners=True,
    )
    return sampled.reshape(batch, channels, *out_shape)


@dataclass
class Transform:
    """A registration result ``phi(x) = initial @ (x + displacement(x))``, fixed world -> moving world.

    Attributes:
        initial: (4, 4) initial alignment, fixed world -> moving world.
        displacement: (3, k, j, i) displacement ``u`` in mm (world axes) on
            ``grid``, or ``None`` for a purely affine result.
        grid: the fixed grid on which ``displacement`` is defined.
    """

    initial: np.ndarray
    displacement: np.ndarray | None = None
    grid: Grid | None = None

    def __post_init__(self):
        self.initial = np.asarray(self.initial, dtype=float)
        if self.displacement is not None:
            if self.grid is None:
                raise ValueError("a displacement field needs the grid it is defined on")
            expected = (3, *self.grid.array_shape)
            if tuple(self.displacement.shape) != expected:
                raise ValueError(f"displacement must have shape {expected}, got {tuple(self.displacement.shape)}")

    def displacement_at(self, points: np.ndarray) -> np.ndarray:
        """``u`` (mm) at world points (..., 3), trilinear; the edge value outside its grid."""
        points = np.asarray(points, dtype=float)
        if self.displacement is None:
            return np.zeros_like(points)
        field = torch.as_tensor(self.displacement, dtype=torch.float64)[None]
        sampled = sample(field, torch.as_tensor(self.grid.world_to_index), torch.tensor(points)[None],
                         padding_mode="border")
        return np.moveaxis(sampled[0].numpy(), 0, -1)

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """``phi`` at fixed world points (..., 3): the corresponding moving world points."""
        points = np.asarray(points, dtype=float)
        return apply_affine(self.initial, points + self.displacement_at(points))

    def inverse_map_points(self, points: np.ndarray, iterations: int = 100, tolerance_mm: float = 1e-6
                           ) -> np.ndarray:
        """``phi^-1`` at moving world points (..., 3): the fixed points ``x`` with ``phi(x) = p``.

        Solved by the fixed-point iteration ``x <- A^-1 p - u(x)`` (each step a field lookup), which converges
        wherever ``u`` changes by less than a millimetre per millimetre, i.e. where ``phi`` does not fold; it stops
        when no point moves by more than ``tolerance_mm``. This is the direction a Slicer user sees with MR
        points under the output transform (its "ToParent", which VTK inverts the same way, iteratively).
        """
        target = apply_affine(np.linalg.inv(self.initial), np.asarray(points, dtype=float))
        if self.displacement is None:
            return target
        estimate = target.copy()
        for _ in range(iterations):
            updated = target - self.displacement_at(estimate)
            moved = np.abs(updated - estimate).max(initial=0.0)
            estimate = updated
            if moved <= tolerance_mm:
                break
        return estimate

    def map_grid(self, fixed_grid: Grid) -> np.ndarray:
        """``phi`` at every voxel centre of ``fixed_grid``, shape (k, j, i, 3)."""
        points = fixed_grid.world_points()
        if self.displacement is not None and fixed_grid == self.grid:
            points = points + np.moveaxis(self.displacement, 0, -1)
            return apply_affine(self.initial, points)
        return self.map_points(points)


def resample(volume: np.ndarray, moving_grid: Grid, transform: Transform, fixed_grid: Grid,
             mode: str = "bilinear") -> np.ndarray:
    """Warp a moving volume onto the fixed grid: ``out(x) = volume(phi(x))``; zero outside.

    Args:
        volume: (C, k, j, i) or (k, j, i) on ``moving_grid``.

    Returns:
        The same number of channels on ``fixed_grid``, float32.
    """
    volume = np.asarray(volume, dtype=np.float32)
    single = volume.ndim == 3
    if single:
        volume = volume[None]
    points = torch.as_tensor(transform.map_grid(fixed_grid))[None]
    warped = sample(torch.as_tensor(volume, dtype=torch.float64)[None],
                    torch.as_tensor(moving_grid.world_to_index), points, mode=mode)[0]
    warped = warped.float().numpy()
    return warped[0] if single else warped


def warp(moving: torch.Tensor, moving_grid: Grid, fixed_grid: Grid, initial: torch.Tensor,
         displacement: torch.Tensor | None = None, mode: str = "bilinear") -> torch.Tensor:
    """Warp moving volumes onto the fixed grid through ``phi``, differentiably (torch).

    Args:
        moving: (B, C, k, j, i) on ``moving_grid``.
        initial: (B, 4, 4) or (4, 4) initial alignments, fixed world -> moving world.
        displacement: (B, 3, k, j, i) ``u`` in mm on ``fixed_grid``, or ``None``.

    Returns:
        (B, C, k, j, i) on ``fixed_grid``: ``moving(initial @ (x + u(x)))``.
    """
    batch = moving.shape[0]
    points = torch.tensor(fixed_grid.world_points(), dtype=moving.dtype, device=moving.device)
    points = points.expand(batch, *points.shape)
    if displacement is not None:
        expected = (batch, 3, *fixed_grid.array_shape)
        if tuple(displacement.shape) != expected:
            raise ValueError(f"displacement must have shape {expected}, got {tuple(displacement.shape)}")
        points = points + displacement.movedim(1, -1)
    initial = torch.as_tensor(initial, dtype=moving.dtype, device=moving.device).expand(batch, 4, 4)
    points = torch.einsum("bij,b...j->b...i", initial[:, :3, :3], points) + initial[:, None, None, None, :3, 3]
    return sample(moving, torch.as_tensor(moving_grid.world_to_index), points, mode=mode)
