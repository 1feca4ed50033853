"""A synthetic MR/TRUS prostate case with a known true transform: the demo's default case and test data.

The anatomy (gland, central zone, capsule, periprostatic fat, rectum, landmark
blobs) is a set of analytic functions of the MR (moving) world position. The MR
shows it on the MR grid through a T2-like intensity model. The TRUS shows the
same anatomy through the true transform ``phi`` (fixed world -> moving world, see
:mod:`MetaRegistrationLib.geometry`): every TRUS voxel ``x`` shows the tissue at
``phi(x)``, through an ultrasound-like model. Labels are evaluated the same way,
so ``fixed_labels(x) = moving_labels(phi(x))`` holds at every voxel centre with no
interpolation, and the true transform's landmark TRE is only the sampling error
(about 0.1 mm).

Grids and placement mimic the real data (``mrus-prostate``): MR 69x69x64 and TRUS
47x63x44 voxels of 1.5 mm, both with origin (-1.5, -1.5, 1.5) and direction
diag(-1, -1, 1) (how SimpleITK reads their identity NIfTI affines), so the two
volumes share a corner and identity alignment is off by about 1 cm. The axis
roles are those of :mod:`MetaRegistrationLib.sweep`: i = depth with the probe
and rectum at high i, j = left-right, k = the probe axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from .data import Case, Dataset, Volume
from .errors import InputError
from .geometry import Grid, Transform, translation

MR_SIZE = (69, 69, 64)
TRUS_SIZE = (47, 63, 44)
SPACING = 1.5
ORIGIN = (-1.5, -1.5, 1.5)
DIRECTION = np.diag([-1.0, -1.0, 1.0])

GLAND_SIZE_MM = (35.0, 45.0, 40.0)
"""Gland extent along (depth, left-right, superior-inferior), before perturbation."""
MR_GLAND_CENTRE_MM = (45.0, 54.0, 45.0)
"""Gland centre in the MR, in mm from voxel 0 along (i, j, k) (real MR glands sit near index (30, 36, 30))."""
TRUS_GLAND_CENTRE_MM = (43.5, 46.5, 36.0)
"""Gland centre in the TRUS, in mm from voxel 0 along (i, j, k) (real TRUS glands sit near index (29, 31, 24))."""
PROBE_RADIUS_MM = 9.0
FAN_HALF_ANGLE_DEG = 45.0
FAN_DEPTH_MM = 85.0
ATTENUATION_PER_MM = 0.012
DISPLACEMENT_SMOOTHING_MM = 12.0
MAX_DISPLACEMENT_GRADIENT = 0.4
"""Bound on the Frobenius norm of grad u: below 1, x + u(x) cannot fold."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class _SmoothField:
    """A smooth random scalar field of about unit variance: a sum of random plane waves (mm wavelengths)."""

    def __init__(self, rng: np.random.Generator, shortest_mm: float, longest_mm: float, waves: int = 12):
        directions = rng.normal(size=(waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.wave_vectors = directions * (2 * np.pi / rng.uniform(shortest_mm, longest_mm, size=(waves, 1)))
        self.phases = rng.uniform(0, 2 * np.pi, size=waves)
        self.amplitude = np.sqrt(2.0 / waves)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Values at world points (..., 3), shape (...)."""
        result = np.zeros(points.shape[:-1])
        for vector, phase in zip(self.wave_vectors, self.phases):
            result += np.cos(points @ vector + phase)
        return self.amplitude * result


class _Anatomy:
    """Random prostate anatomy as functions of the MR world position (mm)."""

    def __init__(self, rng: np.random.Generator, centre: np.ndarray, axes: np.ndarray, rectum_axis_point: np.ndarray,
                 landmark_count: int, landmark_sigma_mm: float):
        self.centre = centre
        # Gland frame: the grid's (depth, left-right, probe) axes, tilted by up to ~10 degrees.
        tilt = rng.normal(scale=np.radians(5.0), size=3)
        self.rotation = axes @ _rotation(tilt)
        self.semi_axes = np.asarray(GLAND_SIZE_MM) / 2 * rng.uniform(0.9, 1.1, size=3)
        # Surface perturbation: radius 1 + n.S.n + b.n for unit directions n (smooth, low order).
        perturbation = rng.normal(scale=0.05, size=(3, 3))
        self.shape_matrix = (perturbation + perturbation.T) / 2
        self.shape_vector = rng.normal(scale=0.04, size=3)
        self.central_offset = np.array([-3.0, 0.0, 3.0]) + rng.normal(scale=1.0, size=3)
        self.rectum_point = rectum_axis_point
        self.rectum_direction = axes[:, 2]
        self.rectum_radius = PROBE_RADIUS_MM + 1.0
        self.texture = _SmoothField(rng, 6.0, 20.0)
        self.fat_thickness = _SmoothField(rng, 15.0, 40.0)
        self.fat_pad = _SmoothField(rng, 15.0, 40.0)
        self.landmark_sigma = landmark_sigma_mm
        self.landmarks = self._place_landmarks(rng, landmark_count)
        self.landmark_kinds = rng.integers(0, 2, size=landmark_count)  # 0 cyst, 1 calcification

    def local(self, points: np.ndarray) -> np.ndarray:
        """Points (..., 3) in the gland frame (mm from the gland centre, along depth, left-right, probe)."""
        return (points - self.centre) @ self.rotation

    def surface_level(self, local: np.ndarray) -> np.ndarray:
        """Approximate signed distance in mm to the gland surface (negative inside), shape (...)."""
        scaled = local / self.semi_axes
        # The probe flattens the posterior gland (high depth).
        scaled[..., 0] *= np.where(scaled[..., 0] > 0, 1.15, 1.0)
        radius = np.linalg.norm(scaled, axis=-1)
        unit = scaled / np.maximum(radius, 1e-9)[..., None]
        boundary = 1.0 + np.einsum("...a,ab,...b->...", unit, self.shape_matrix, unit) + unit @ self.shape_vector
        return (radius / boundary - 1.0) * self.semi_axes.mean()

    def _place_landmarks(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Landmark centres (count, 3) in world mm, well inside the gland and at least 8 mm apart."""
        centres: list[np.ndarray] = []
        while len(centres) < count:
            local = rng.uniform(-1, 1, size=3) * self.semi_axes
            far_apart = all(np.linalg.norm(local - other) >= 8.0 for other in centres)
            if self.surface_level(local[None])[0] < -3.0 and far_apart:
                centres.append(local)
        return self.centre + np.asarray(centres) @ self.rotation.T

    def maps(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Tissue maps at world points (..., 3), each of shape (...), or (L, ...) for ``landmarks``.

        ``gland`` is the binary label; the other maps are soft memberships in [0, 1]
        (``texture`` is a zero-mean field of about unit variance).
        """
        local = self.local(points)
        level = self.surface_level(local)
        central_local = (local - self.central_offset) / (0.6 * self.semi_axes)
        central = _sigmoid((1.0 - np.linalg.norm(central_local, axis=-1)) / 0.08)
        texture = self.texture(points)
        thickness = 5.0 + 2.5 * self.fat_thickness(points)
        fat = _sigmoid((level - 1.0) / 0.8) * _sigmoid((thickness - level) / 1.5)
        # Anterior fat pad in front of the gland (low depth).
        fat = np.maximum(fat, _sigmoid((-local[..., 0] - self.semi_axes[0] - 4.0) / 3.0)
                         * _sigmoid(2.0 * self.fat_pad(points)))
        offset = points - self.rectum_point
        axial = offset - (offset @ self.rectum_direction)[..., None] * self.rectum_direction
        rectum = _sigmoid((self.rectum_radius - np.linalg.norm(axial, axis=-1)) / 1.0)
        squared = ((points[None] - self.landmarks.reshape(-1, *[1] * (points.ndim - 1), 3)) ** 2).sum(-1)
        landmarks = np.exp(-squared / (2 * self.landmark_sigma ** 2))
        landmarks[landmarks < 1e-3] = 0.0  # finite support, like real label blobs
        return {
            "gland": (level < 0).astype(float),
            "gland_soft": _sigmoid(-level / 0.7),
            "central": central,
            "capsule": np.exp(-(level / 1.2) ** 2),
            "fat": fat,
            "rectum": rectum,
            "texture": texture,
            "landmarks": landmarks,
        }


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from three small angles (radians) about x, y and z."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [n for n in range(3) if n != axis]
        step = np.eye(3)
        step[a, a] = step[b, b] = np.cos(angle)
        step[a, b], step[b, a] = -np.sin(angle), np.sin(angle)
        matrix = matrix @ step
    return matrix


def _grid(size: tuple[int, int, int], scale: float) -> Grid:
    return Grid.from_arrays([max(4, round(n * scale)) for n in size], [SPACING / scale] * 3, ORIGIN, DIRECTION)


def _world(grid: Grid, mm_along_axes) -> np.ndarray:
    """World position of a point given in mm from voxel 0 along the grid's (i, j, k) axes."""
    return np.asarray(grid.origin) + np.asarray(grid.direction) @ np.asarray(mm_along_axes, dtype=float)


def _smooth_displacement(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """A smooth random displacement (3, k, j, i) in mm, 2-3.5 mm RMS, that does not fold space."""
    sigma = DISPLACEMENT_SMOOTHING_MM / np.asarray(grid.spacing)[::-1]
    field = np.stack([gaussian_filter(rng.normal(size=grid.array_shape), sigma, mode="reflect")
                      for _ in range(3)])
    field *= rng.uniform(2.0, 3.5) / np.sqrt((field ** 2).sum(axis=0).mean())
    # grad u in world units; its Frobenius norm is the same in any orthonormal frame.
    gradient = np.stack([np.stack(np.gradient(component, *np.asarray(grid.spacing)[::-1]))
                         for component in field])
    largest = np.sqrt((gradient ** 2).sum(axis=(0, 1))).max()
    if largest > MAX_DISPLACEMENT_GRADIENT:
        field *= MAX_DISPLACEMENT_GRADIENT / largest
    return field


def _mr_image(maps: dict[str, np.ndarray], kinds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """T2-like: peripheral gland mid-grey, darker central zone, dark capsule, bright fat, dark rectum."""
    value = 75.0 * (1 - maps["fat"]) + 190.0 * maps["fat"]
    gland = 135.0 * (1 - maps["central"]) + 90.0 * maps["central"]
    value = value * (1 - maps["gland_soft"]) + gland * maps["gland_soft"] - 35.0 * maps["capsule"]
    value = value * (1 - maps["rectum"]) + 20.0 * maps["rectum"]
    for blob, kind in zip(maps["landmarks"], kinds):
        value += (-70.0 if kind else 90.0) * blob  # calcification dark, cyst bright
    value *= 1.0 + 0.07 * maps["texture"]
    value += rng.normal(scale=4.0, size=value.shape)
    return np.clip(value, 0, 255)


def _trus_image(maps: dict[str, np.ndarray], kinds: np.ndarray, grid: Grid, apex_mm: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Ultrasound-like: hypoechoic gland, bright capsule and fat, Rayleigh speckle, depth attenuation, fan.

    ``apex_mm`` is the probe axis in the (i, j) plane, mm from voxel 0 along i and j.
    """
    echo = 0.45 * (1 - maps["fat"]) + 0.7 * maps["fat"]
    gland = 0.22 * (1 - maps["central"]) + 0.3 * maps["central"]
    echo = echo * (1 - maps["gland_soft"]) + gland * maps["gland_soft"] + 0.3 * maps["capsule"]
    for blob, kind in zip(maps["landmarks"], kinds):
        echo = echo + 0.9 * blob if kind else echo * (1 - 0.9 * blob)  # calcification bright, cyst anechoic
    echo *= 1.0 + 0.15 * maps["texture"]
    # Speckle is a property of the acquisition: drawn on the TRUS grid, slightly correlated, mean 1.
    speckle = gaussian_filter(rng.rayleigh(size=grid.array_shape), 0.6)
    speckle /= speckle.mean()
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.array_shape), indexing="ij")
    depth = apex_mm[0] - i * grid.spacing[0]
    lateral = j * grid.spacing[1] - apex_mm[1]
    radius = np.hypot(depth, lateral)
    angle = np.degrees(np.arctan2(np.abs(lateral), depth))
    fan = (radius >= PROBE_RADIUS_MM) & (radius <= FAN_DEPTH_MM) & (angle <= FAN_HALF_ANGLE_DEG)
    attenuation = np.exp(-ATTENUATION_PER_MM * (radius - PROBE_RADIUS_MM))
    return np.where(fan, np.clip(400.0 * echo * speckle * attenuation, 0, 255), 0.0)


def make_phantom_case(seed: int = 0, scale: float = 1.0, landmark_count: int | None = None) -> tuple[Case, Transform]:
    """A synthetic MR/TRUS case and its true transform.

    Args:
        seed: everything random (shape, placement, deformation, landmarks, noise)
            follows from it; the same seed gives the same case.
        scale: grid resolution factor: voxel counts times ``scale``, spacing
            1.5 mm / ``scale``, so the anatomy (in mm) is unchanged; e.g. 0.5 for a
            tiny case in unit tests.
        landmark_count: landmark blobs (label channels 1..), 3 or 4 at random if omitted.

    Returns:
        ``(case, transform)``: ``case`` (id ``phantom-<seed>``) with MR image and
        labels (gland, landmarks) on the MR grid and TRUS image and labels on the
        TRUS grid, intensities 0..255; ``transform`` the true ``phi``, fixed world ->
        moving world: a translation of about 1 cm after a smooth displacement of
        2-3.5 mm RMS defined on the TRUS grid.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    rng = np.random.default_rng(seed)
    count = int(rng.integers(3, 5)) if landmark_count is None else landmark_count
    if count < 1:
        raise ValueError(f"landmark_count must be at least 1, got {count}")
    moving_grid, fixed_grid = _grid(MR_SIZE, scale), _grid(TRUS_SIZE, scale)

    moving_centre = _world(moving_grid, np.asarray(MR_GLAND_CENTRE_MM) + rng.normal(scale=1.5, size=3))
    fixed_centre = _world(fixed_grid, np.asarray(TRUS_GLAND_CENTRE_MM) + rng.normal(scale=1.5, size=3))
    shift = moving_centre - fixed_centre
    displacement = _smooth_displacement(rng, fixed_grid)
    transform = Transform(translation(shift), displacement, fixed_grid)

    # The probe axis lies just beyond the TRUS grid's last depth plane, centred left-right, its
    # surface a few mm inside the grid; the rectum around it is placed where the true
    # transform carries it in the MR.
    apex_mm = np.array([(fixed_grid.size[0] - 1) * fixed_grid.spacing[0] + PROBE_RADIUS_MM - 4.0,
                        (fixed_grid.size[1] - 1) * fixed_grid.spacing[1] / 2])
    apex_world = _world(fixed_grid, [apex_mm[0], apex_mm[1], 0.0])
    anatomy = _Anatomy(rng, moving_centre, np.asarray(moving_grid.direction), apex_world + shift, count,
                       landmark_sigma_mm=max(2.0, moving_grid.spacing[0]))

    moving_maps = anatomy.maps(moving_grid.world_points())
    fixed_maps = anatomy.maps(transform.map_grid(fixed_grid))
    kinds = anatomy.landmark_kinds
    mr = _mr_image(moving_maps, kinds, rng)
    trus = _trus_image(fixed_maps, kinds, fixed_grid, apex_mm, rng)

    def labels(maps: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([maps["gland"][None], maps["landmarks"]]).astype(np.float32)

    name = f"phantom-{seed}"
    case = Case(
        case_id=name,
        moving_image=Volume(mr[None].astype(np.float32), moving_grid, f"{name} MR image"),
        moving_labels=Volume(labels(moving_maps), moving_grid, f"{name} MR labels"),
        fixed_image=Volume(trus[None].astype(np.float32), fixed_grid, f"{name} TRUS image"),
        fixed_labels=Volume(labels(fixed_maps), fixed_grid, f"{name} TRUS labels"),
    )
    return case, transform


def open_case(data_dir: str | Path | None = None, case_id: str | None = None) -> Case:
    """A case of a data set folder, or the phantom (seed 0) without one: how every front end opens "a real case
    or the phantom" (``metareg demo`` and ``benchmark``, the web app).

    Args:
        data_dir: a data set folder (:class:`~.data.Dataset`); ``None`` for the phantom.
        case_id: a case of ``data_dir``; its first case (sorted) when ``None``.

    Raises:
        InputError: for a case ID without a folder, a folder that is not a data set or holds no complete case,
            a case it does not hold, or a bad file of the case (each naming what is at fault).
    """
    return open_case_with_truth(data_dir, case_id)[0]


def open_case_with_truth(data_dir: str | Path | None = None,
                         case_id: str | None = None) -> tuple[Case, Transform | None]:
    """:func:`open_case` and the case's true transform: the phantom's, ``None`` for a real case."""
    if data_dir is None:
        if case_id is not None:
            raise InputError(f"case {case_id!r}: a case ID needs the data folder it is in (without a folder the "
                             "built-in phantom is opened, which has no case IDs)")
        return make_phantom_case(seed=0)
    dataset = Dataset(data_dir)
    chosen = dataset.select(cases=None if case_id is None else [case_id])
    return dataset.load(chosen[0]), None
