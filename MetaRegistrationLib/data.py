"""Reading images and data sets with their physical geometry, and checking them.

A data set is a folder laid out as ``../shared/data/mrus-prostate``::

    moving_images/ID.nii.gz   MR (3D)
    moving_labels/ID.nii.gz   MR labels (4D, or a 3D vector image): channel 0 gland, 1.. landmarks
    fixed_images/ID.nii.gz    TRUS (3D)
    fixed_labels/ID.nii.gz    TRUS labels, channel k matching MR channel k
    split.json                optional: {"train": [...], "val": [...], ...}

NIfTI, NRRD and MetaImage files are read with SimpleITK; geometry follows the
convention of :mod:`MetaRegistrationLib.geometry`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
FOLDERS = ("moving_images", "moving_labels", "fixed_images", "fixed_labels")


@dataclass
class Volume:
    """Voxel values with their geometry.

    Attributes:
        array: (C, k, j, i) float32 values; C = 1 for an image, one channel per
            structure for labels.
        grid: where the voxels lie in the world.
        source: the file (or other origin) it came from, for messages.
    """

    array: np.ndarray
    grid: Grid
    source: str = "<memory>"

    def __post_init__(self):
        expected = self.grid.array_shape
        if self.array.ndim != 4 or tuple(self.array.shape[1:]) != expected:
            raise ValueError(f"{self.source}: array must be (C, {', '.join(map(str, expected))}), "
                             f"got {tuple(self.array.shape)}")


def _grid_of(image: sitk.Image) -> Grid:
    """The 3D grid of an image; a 4D image's fourth axis (channels) is dropped."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(dim, dim)[:3, :3]
    return Grid.from_arrays(image.GetSize()[:3], image.GetSpacing()[:3], image.GetOrigin()[:3], direction)


def read_volume(path: str | Path, multichannel: bool = False) -> Volume:
    """Read a 3D image (or, with ``multichannel``, a stack of 3D label channels).

    Multi-channel labels may be stored as a 4D image (channels last, as NIfTI
    does) or as a 3D vector image (as NRRD and MHA do).

    Raises:
        InputError: naming the file if it is missing, unreadable, not 3D,
            or holds NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = next((line for line in str(error).splitlines() if line.strip()), "unknown reason")
        raise InputError(f"{path}: cannot be read as an image ({reason.strip()[:200]})") from None
    dim = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if dim == 3 and components == 1:
        array = array[None]
    elif dim == 3 and multichannel:
        array = np.moveaxis(array, -1, 0)
    elif dim == 4 and multichannel and components == 1:
        pass  # SimpleITK already returns (C, k, j, i)
    else:
        kind = f"{dim}D" + (f" with {components} components per voxel" if components > 1 else "")
        wanted = "a 3D label image (4D or vector-valued for several channels)" if multichannel else "a 3D scalar image"
        raise InputError(f"{path}: is {kind}, {wanted} is expected")
    if min(array.shape[1:]) < 2:
        raise InputError(f"{path}: has a dimension of size {min(array.shape[1:])}, a 3D volume is expected")
    if not np.isfinite(array).all():
        raise InputError(f"{path}: contains NaN or infinite values")
    return Volume(np.ascontiguousarray(array), _grid_of(image), str(path))


@dataclass
class Case:
    """One MR (moving) / TRUS (fixed) pair with matching label channels."""

    case_id: str
    moving_image: Volume
    moving_labels: Volume
    fixed_image: Volume
    fixed_labels: Volume

    def __post_init__(self):
        check_pair(self.moving_image, self.moving_labels)
        check_pair(self.fixed_image, self.fixed_labels)
        n_moving, n_fixed = len(self.moving_labels.array), len(self.fixed_labels.array)
        if n_moving != n_fixed:
            raise InputError(f"{self.fixed_labels.source}: has {n_fixed} label channels but "
                             f"{self.moving_labels.source} has {n_moving}; channel k must match channel k")
        for labels in (self.moving_labels, self.fixed_labels):
            if not (labels.array[0] > 0.5).any():
                raise InputError(f"{labels.source}: the gland label (channel 0) is empty")

    @property
    def landmark_count(self) -> int:
        """Number of landmark channels (channels after the gland)."""
        return len(self.fixed_labels.array) - 1


def check_pair(image: Volume, labels: Volume) -> None:
    """Check that an image and its labels share one grid (to 1e-3 mm)."""
    a, b = image.grid, labels.grid
    same = (a.size == b.size and np.allclose(a.spacing, b.spacing, atol=1e-3)
            and np.allclose(a.origin, b.origin, atol=1e-3) and np.allclose(a.direction, b.direction, atol=1e-3))
    if not same:
        raise InputError(f"{labels.source}: its grid ({b.describe()}, origin {np.round(b.origin, 3).tolist()}) "
                         f"differs from the image {image.source} ({a.describe()}, origin {np.round(a.origin, 3).tolist()})")


def find_image(folder: Path, case_id: str) -> Path:
    """The image file of a case in a folder, whatever its supported suffix."""
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{case_id}{suffix}"
        if candidate.is_file():
            return candidate
    raise InputError(f"{folder / case_id}{IMAGE_SUFFIXES[0]}: file not found (tried {', '.join(IMAGE_SUFFIXES)})")


def _case_id(path: Path) -> str | None:
    return next((path.name[: -len(s)] for s in IMAGE_SUFFIXES if path.name.endswith(s)), None)


class Dataset:
    """A data set folder (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: data folder not found")
        missing = [name for name in FOLDERS if not (self.root / name).is_dir()]
        if missing:
            raise InputError(f"{self.root}: not a data set folder, missing {', '.join(name + '/' for name in missing)}")

    def case_ids(self) -> list[str]:
        """IDs of the cases whose four files are all present, sorted."""
        per_folder = [{_case_id(p) for p in (self.root / name).iterdir()} - {None} for name in FOLDERS]
        return sorted(set.intersection(*per_folder))

    def split(self, name: str) -> list[str]:
        """Case IDs of a named split from ``split.json``."""
        path = self.root / "split.json"
        if not path.is_file():
            raise InputError(f"{path}: file not found, so split {name!r} is unknown")
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: is not valid JSON ({error})") from None
        if name not in splits:
            raise InputError(f"{path}: has no split {name!r} (it has {', '.join(sorted(splits))})")
        return list(splits[name])

    def load(self, case_id: str) -> Case:
        """Read and check the four files of a case."""
        return Case(
            case_id=case_id,
            moving_image=read_volume(find_image(self.root / "moving_images", case_id)),
            moving_labels=read_volume(find_image(self.root / "moving_labels", case_id), multichannel=True),
            fixed_image=read_volume(find_image(self.root / "fixed_images", case_id)),
            fixed_labels=read_volume(find_image(self.root / "fixed_labels", case_id), multichannel=True),
        )


def default_data_dir() -> Path:
    """``../shared/data/mrus-prostate`` beside the project checkout, or ``$METAREG_DATA``."""
    configured = os.environ.get("METAREG_DATA")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "mrus-prostate"
