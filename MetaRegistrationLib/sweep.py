"""Simulated tracked TRUS sweeps: 2D frames with their poses, and the sparse network input.

Axes of the TRUS (fixed) volumes, read from the real data (``mrus-prostate``):
the TRUS field of view is a fan in the (i, j) plane with its apex at high i, and
the echoes fade towards low i (depth attenuation). The apex is the probe, lying
in the rectum along k. So:

- ``DEPTH_AXIS`` = i: distance from the probe (the rectum is at high i);
- ``LEFT_RIGHT_AXIS`` = j: a sagittal frame is a plane of constant j;
- ``PROBE_AXIS`` = k: the probe's long axis, superior-inferior.

The MR (moving) volumes have the same axis roles (the dark rectum is at high i).
These are ITK index axes (i, j, k) = 0, 1, 2; in a (k, j, i) array index axis
``a`` is array axis ``2 - a`` (see :mod:`MetaRegistrationLib.geometry`).

Sweep direction. The clinical sweep rotates the probe from the patient's right to
the left. The data files' affines are identity, not anatomical, so which end of j
is the patient's right cannot be read from them; by convention here **a sweep
runs from the highest j to the lowest**, and every function returning frame
positions returns them in that acquisition order.

A :class:`Frame` is an image plus a pose, not a slice index, so radial frames
(planes through the probe axis, as the true sweep acquires them) work like the
axis-aligned sagittal slices that approximate them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import Volume
from .errors import InputError
from .geometry import Grid, apply_affine, sample

DEPTH_AXIS = 0
"""ITK index axis (i) pointing away from the probe: depth (the probe is at high i)."""
LEFT_RIGHT_AXIS = 1
"""ITK index axis (j) across the sweep: a sagittal frame is a plane of constant j."""
PROBE_AXIS = 2
"""ITK index axis (k) along the probe: superior-inferior."""
SAGITTAL_AXIS = 2 - LEFT_RIGHT_AXIS
"""The axis of a (k, j, i) array that frame positions index: ``np.take(array, j, axis=SAGITTAL_AXIS)``
is the sagittal plane at j, a (k, i) array."""

_POSE_TOLERANCE = 1e-6


@dataclass
class Frame:
    """One tracked 2D TRUS frame: an image, its gland label and its pose.

    Attributes:
        image: (V, U) float32 pixel values; ``image[v, u]`` is pixel (u, v).
        gland: (V, U) float32 gland label on the same pixels.
        pose: (4, 4) matrix from pixel index (u, v, w, 1) to fixed world (x, y, z, 1)
            in LPS mm. Columns 0 and 1 are the world steps of one pixel along u and
            v (their lengths are the pixel spacing); column 2 is the plane's unit
            normal, so ``w`` is the signed distance in mm from the plane and the
            pixels lie at w = 0; column 3 is the world position of pixel (0, 0).
            :func:`plane_pose` builds one.
    """

    image: np.ndarray
    gland: np.ndarray
    pose: np.ndarray

    def __post_init__(self):
        self.image = np.asarray(self.image, dtype=np.float32)
        self.gland = np.asarray(self.gland, dtype=np.float32)
        self.pose = np.asarray(self.pose, dtype=float)
        if self.image.ndim != 2 or self.gland.shape != self.image.shape:
            raise InputError(f"a frame needs a 2D image and a gland label of the same shape, got "
                             f"{self.image.shape} and {self.gland.shape}")
        if self.pose.shape != (4, 4) or not np.allclose(self.pose[3], [0, 0, 0, 1]):
            raise InputError(f"a frame pose must be a 4x4 affine matrix, got shape {self.pose.shape}")
        u_step, v_step, normal = self.pose[:3, 0], self.pose[:3, 1], self.pose[:3, 2]
        expected = np.cross(u_step, v_step)
        if np.linalg.norm(expected) == 0:
            raise InputError("a frame pose's pixel axes (columns 0 and 1) must be non-zero and not parallel")
        if not np.allclose(normal, expected / np.linalg.norm(expected), atol=_POSE_TOLERANCE):
            raise InputError("a frame pose's column 2 must be the unit normal of its pixel axes "
                             "(use plane_pose to build one)")

    @property
    def shape(self) -> tuple[int, int]:
        """(V, U): pixel rows and columns."""
        return self.image.shape

    @property
    def spacing(self) -> tuple[float, float]:
        """Pixel size in mm along (u, v)."""
        return float(np.linalg.norm(self.pose[:3, 0])), float(np.linalg.norm(self.pose[:3, 1]))

    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the frame plane in world coordinates, shape (3,)."""
        return self.pose[:3, 2].copy()


LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights of R, G and B: the intensity of a colour frame."""


def frame_intensity(pixels: np.ndarray) -> np.ndarray:
    """A frame's pixels as one intensity per pixel, float32 (V, U).

    Ultrasound is grey, but some devices stream it over OpenIGTLink as RGB or RGBA (a vector image). Pixels of
    shape (V, U) or (V, U, 1) are taken as they are; (V, U, 3) and (V, U, 4) become the BT.601 luma
    ``0.299 R + 0.587 G + 0.114 B`` (alpha ignored), which is the grey value itself for a grey image stored as RGB.

    Raises:
        InputError: for any other number of components.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        return (pixels[..., :3] @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)).astype(np.float32)
    components = pixels.shape[-1] if pixels.ndim == 3 else None
    raise InputError(f"a frame needs one intensity or RGB(A) per pixel, got {components} components" if components
                     else f"a frame must be a 2D image, got shape {pixels.shape}")


def plane_pose(origin, u_step, v_step) -> np.ndarray:
    """The pose of a frame whose pixel (0, 0) lies at ``origin`` (3,) and whose pixels step by ``u_step`` and
    ``v_step`` (3,), world vectors in mm; the normal (column 2) is ``u_step x v_step`` normalised."""
    u_step, v_step = np.asarray(u_step, dtype=float), np.asarray(v_step, dtype=float)
    normal = np.cross(u_step, v_step)
    length = np.linalg.norm(normal)
    if length == 0:
        raise InputError("a frame's pixel axes must be non-zero and not parallel")
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = u_step, v_step, normal / length, origin
    return pose


def sagittal_pose(grid: Grid, position: int) -> np.ndarray:
    """The pose of the axis-aligned sagittal frame at voxel index j = ``position`` of ``grid``.

    Pixel (u, v) of the frame is voxel (i = u, j = position, k = v), so the frame's
    (V, U) image is ``array[:, position, :]`` of a (k, j, i) array.
    """
    index_to_world = grid.index_to_world
    origin = apply_affine(index_to_world, [0.0, position, 0.0])
    return plane_pose(origin, index_to_world[:3, DEPTH_AXIS], index_to_world[:3, PROBE_AXIS])


def _check_gland(fixed_gland: np.ndarray, grid: Grid | None = None) -> np.ndarray:
    gland = np.asarray(fixed_gland, dtype=np.float32)
    if gland.ndim != 3:
        raise InputError(f"the gland label must be a (k, j, i) array, got shape {gland.shape}")
    if grid is not None and gland.shape != grid.array_shape:
        raise InputError(f"the gland label has shape {gland.shape} but the TRUS volume is "
                         f"{grid.array_shape} (k, j, i)")
    return gland


def _check_position(position, grid: Grid) -> int:
    count = grid.size[LEFT_RIGHT_AXIS]
    if float(position) != int(position) or not 0 <= int(position) < count:
        raise InputError(f"frame position j = {position} is outside the TRUS volume "
                         f"(integer voxel indices 0..{count - 1} along the left-right axis)")
    return int(position)


def extract_frame(fixed_image: Volume, fixed_gland: np.ndarray, position: int) -> Frame:
    """The axis-aligned sagittal frame at voxel index j = ``position`` of a TRUS volume.

    Args:
        fixed_image: the TRUS volume, (1, k, j, i).
        fixed_gland: (k, j, i) gland label on the same grid.
        position: integer voxel index along the left-right axis (j).

    Returns:
        A frame of shape (V, U) = (k, i) whose pixels are the voxels of that plane.

    Raises:
        InputError: if the position is outside the volume or the label does not fit it.
    """
    gland = _check_gland(fixed_gland, fixed_image.grid)
    position = _check_position(position, fixed_image.grid)
    return Frame(image=fixed_image.array[0][:, position, :].copy(), gland=gland[:, position, :].copy(),
                 pose=sagittal_pose(fixed_image.grid, position))


def sample_frame(fixed_image: Volume, fixed_gland: np.ndarray, pose: np.ndarray, shape: tuple[int, int]) -> Frame:
    """A frame of any pose cut from a TRUS volume (trilinear; zero outside the volume).

    This simulates frames that are not voxel planes, e.g. radial planes through the
    probe axis.

    Args:
        fixed_image: the TRUS volume, (1, k, j, i).
        fixed_gland: (k, j, i) gland label on the same grid.
        pose: (4, 4) frame pose as in :class:`Frame` (see :func:`plane_pose`).
        shape: (V, U) pixels.
    """
    gland = _check_gland(fixed_gland, fixed_image.grid)
    rows, columns = shape
    v, u = np.meshgrid(np.arange(rows, dtype=float), np.arange(columns, dtype=float), indexing="ij")
    points = apply_affine(np.asarray(pose, dtype=float), np.stack([u, v, np.zeros_like(u)], axis=-1))
    volumes = torch.as_tensor(np.stack([fixed_image.array[0], gland]), dtype=torch.float64)[None]
    values = sample(volumes, torch.as_tensor(fixed_image.grid.world_to_index), torch.as_tensor(points)[None])
    image, gland_plane = values[0].float().numpy()
    return Frame(image=image, gland=gland_plane, pose=pose)


def gland_extent(fixed_gland: np.ndarray) -> tuple[int, int]:
    """The lowest and highest j (inclusive) of the sagittal planes holding gland (label > 0.5).

    Raises:
        InputError: if the gland label is empty.
    """
    gland = _check_gland(fixed_gland)
    planes = np.flatnonzero((gland > 0.5).any(axis=(0, 2)))
    if planes.size == 0:
        raise InputError("the TRUS gland label is empty: no voxel above 0.5, so no frame can be placed on it")
    return int(planes[0]), int(planes[-1])


def sweep_positions(fixed_gland: np.ndarray, count: int) -> list[int]:
    """``count`` sagittal plane indices spread uniformly over the gland, in acquisition order.

    The gland's extent along j (its planes ``low..high``) is cut into ``count``
    equal parts and the plane at the centre of each is taken, so the frames are
    evenly spaced and none is a sliver at the gland's edge. The planes are
    distinct and returned from the highest j to the lowest (the sweep direction
    of this module).

    Args:
        fixed_gland: (k, j, i) TRUS gland label.
        count: number of frames F, 1 to the number of planes the gland spans.

    Returns:
        F integer j indices, decreasing.

    Raises:
        InputError: for an empty gland, or a count the gland's extent cannot hold.
    """
    low, high = gland_extent(fixed_gland)
    planes = high - low + 1
    if not 1 <= count <= planes:
        raise InputError(f"cannot place {count} distinct frame{'s' * (count != 1)} on a TRUS gland label "
                         f"spanning {planes} sagittal plane{'s' * (planes != 1)} (j = {low}..{high}); at most {planes} "
                         "fit")
    width = planes / count
    centres = high + 0.5 - (np.arange(count) + 0.5) * width
    # Centres are at least one plane apart, so the planes holding them are distinct.
    return [int(np.floor(c + 0.5)) for c in centres]


def random_frame_positions(fixed_gland: np.ndarray, rng: np.random.Generator, f_min: int = 2,
                           f_max: int = 10) -> list[int]:
    """A random, clinically plausible set of sagittal frames for training.

    F is uniform in ``f_min..f_max`` (capped at the gland's plane count). The
    frames come from a possibly partial sweep: a window covering a uniform 50 to
    100 % of the gland's extent, placed uniformly within it, which models a user
    who has not swept (or does not sweep) the whole gland. The window is cut into
    F equal parts and one plane is drawn uniformly within each (stratified
    jitter): frames stay spread out, as a steady hand keeps them, yet their
    spacing is irregular, as with a freehand sweep, so the network does not learn
    one fixed spacing. Evaluation uses :func:`sweep_positions` instead.

    Args:
        fixed_gland: (k, j, i) TRUS gland label.
        rng: the random generator (seeded by the caller for reproducibility).
        f_min, f_max: bounds on the frame count, inclusive.

    Returns:
        F distinct integer j indices inside the gland's extent, decreasing
        (acquisition order).

    Raises:
        InputError: for an empty gland, bad bounds, or a gland spanning fewer than ``f_min`` planes.
    """
    if not 1 <= f_min <= f_max:
        raise InputError(f"frame count bounds must satisfy 1 <= f_min <= f_max, got {f_min} and {f_max}")
    low, high = gland_extent(fixed_gland)
    planes = high - low + 1
    if planes < f_min:
        raise InputError(f"the TRUS gland label spans only {planes} sagittal plane{'s' * (planes != 1)} "
                         f"(j = {low}..{high}), fewer than the {f_min} frames asked for")
    count = int(rng.integers(f_min, min(f_max, planes) + 1))
    length = max(count, int(round(rng.uniform(0.5, 1.0) * planes)))
    start = low + int(rng.integers(0, planes - length + 1))
    # Bin b covers plane centres in [edges[b], edges[b+1]); each bin is at least one plane wide.
    edges = start - 0.5 + np.arange(count + 1) * (length / count)
    positions = [int(rng.integers(int(np.ceil(a)), int(np.ceil(b)))) for a, b in zip(edges[:-1], edges[1:])]
    return positions[::-1]


def rasterise_frames(frames: Sequence[Frame], fixed_grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sparse network input: frames written into the fixed grid, zero elsewhere.

    A voxel is covered by a frame when its centre lies within half a voxel of the
    frame plane (distance measured in voxel units, i.e. in index space, so
    exactly one voxel per line across an axis-aligned plane) and projects onto
    the frame's pixels (within half a pixel of its edge). It takes the frame's
    value at that projection, sampled bilinearly from the frame treated as a
    one-slice volume. A voxel covered by several frames (radial frames meet near
    the probe axis) takes their mean. An axis-aligned frame from
    :func:`extract_frame` reproduces its slice of the volume exactly.

    Args:
        frames: the frames acquired so far.
        fixed_grid: the TRUS grid to write into.

    Returns:
        (image, gland, mask), each (k, j, i) float32; mask is 1 on covered voxels.
    """
    total = np.zeros((2, *fixed_grid.array_shape))
    hits = np.zeros(fixed_grid.array_shape)
    world_to_index = fixed_grid.world_to_index
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in fixed_grid.array_shape), indexing="ij")
    voxel_index = np.stack([i, j, k], axis=-1)
    for frame in frames:
        plane_in_index = world_to_index @ frame.pose
        normal = np.cross(plane_in_index[:3, 0], plane_in_index[:3, 1])
        normal /= np.linalg.norm(normal)
        distance = (voxel_index - plane_in_index[:3, 3]) @ normal
        near = np.nonzero((distance >= -0.5) & (distance < 0.5))
        if near[0].size == 0:
            continue
        points = apply_affine(fixed_grid.index_to_world, voxel_index[near])
        # (u, v, w) of each voxel centre: w is its distance to the plane, (u, v) its projection.
        u, v, _ = apply_affine(np.linalg.inv(frame.pose), points).T
        rows, columns = frame.shape
        inside = (u >= -0.5) & (u < columns - 0.5) & (v >= -0.5) & (v < rows - 0.5)
        near = tuple(axis[inside] for axis in near)
        projected = apply_affine(frame.pose, np.stack([u[inside], v[inside], np.zeros(inside.sum())], axis=-1))
        # The frame as a one-slice volume (1, 2, 1, V, U) whose world_to_index is the inverse pose.
        planes = torch.as_tensor(np.stack([frame.image, frame.gland]), dtype=torch.float64)[None, :, None]
        values = sample(planes, torch.as_tensor(np.linalg.inv(frame.pose)), torch.as_tensor(projected)[None],
                        padding_mode="border")[0].numpy()
        total[(slice(None), *near)] += values
        hits[near] += 1
    covered = hits > 0
    image, gland = np.where(covered, total / np.maximum(hits, 1), 0.0).astype(np.float32)
    return image, gland, covered.astype(np.float32)


def rasterise_positions(fixed_image: Volume, fixed_gland: np.ndarray,
                        positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sparse input of axis-aligned sagittal frames, straight from the volume (training's fast path).

    Equal to ``rasterise_frames([extract_frame(fixed_image, fixed_gland, p) for p in positions], grid)``.

    Args:
        fixed_image: the TRUS volume, (1, k, j, i).
        fixed_gland: (k, j, i) gland label on the same grid.
        positions: j indices of the frames.

    Returns:
        (image, gland, mask), each (k, j, i) float32.
    """
    gland = _check_gland(fixed_gland, fixed_image.grid)
    planes = [_check_position(p, fixed_image.grid) for p in positions]
    mask = np.zeros(fixed_image.grid.array_shape, dtype=np.float32)
    mask[:, planes, :] = 1.0
    return fixed_image.array[0] * mask, gland * mask, mask
