"""Reading images and data sets with their physical geometry, and checking them.

A data set is a folder laid out as ``../shared/data/mrus-prostate``::

    moving_images/ID.nii.gz   MR (3D)
    moving_labels/ID.nii.gz   MR labels (4D, or a 3D vector image): channel 0 gland, 1.. landmarks
    fixed_images/ID.nii.gz    TRUS (3D)
    fixed_labels/ID.nii.gz    TRUS labels, channel k matching MR channel k
    split.json                optional: {"train": [...], "val": [...], ...}

NIfTI, NRRD and MetaImage files are read with SimpleITK; geometry follows the
convention of :mod:`MetaRegistrationLib.geometry`. Before SimpleITK reads a file its header is checked here,
since ITK reads some broken files without an error: a ``.nii.gz`` whose gzip stream ends early or fails its
check sum, a NIfTI or MetaImage file holding fewer voxel bytes than its header announces, and a zero,
negative or NaN voxel spacing (NIfTI ``pixdim``, MetaImage ``ElementSpacing``, NRRD ``spacings`` / ``space
directions``; ITK only warns, or silently uses 1 mm) are refused, naming the file.

Label values. Label files are read as values in 0..1 (a binary mask, or a graded map such as a
probability). **A label channel whose maximum is greater than 1 (0/255 masks, graded 0..255 maps) is divided
by its maximum**, so that a graded label keeps its shape; wherever a mask is needed (the gland, Dice) a
label counts as inside where its value is above 0.5. A one-line notice, naming the file and its channels,
says so once per file. A landmark's position is the centroid of its channel weighted by these values.

Training domain. :func:`check_training_domain` warns once (one line, on the ``MetaRegistrationLib`` logger)
when a case's voxel spacing or field of view is more than a factor of :data:`TRAINING_DOMAIN_TOLERANCE` away
from the data the model was trained on (a model card's ``inputs.training_domain`` record, else the
``TRAINING_*`` constants here, those of ``mrus-prostate``); :meth:`Dataset.load` calls it.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
FOLDERS = ("moving_images", "moving_labels", "fixed_images", "fixed_labels")

TRAINING_SPACING_MM = 1.5
"""Voxel spacing (mm, every axis) of the data the bundled model was trained on (``mrus-prostate``)."""
TRAINING_FIELD_OF_VIEW_MM = {"moving": (103.5, 103.5, 96.0), "fixed": (70.5, 94.5, 66.0)}
"""Field of view (mm along i, j, k: voxel count times spacing) of the training MR (moving) and TRUS (fixed)."""
TRAINING_DOMAIN_TOLERANCE = 3.0
"""A spacing or field-of-view axis more than this factor above or below the training data's is warned about."""

logger = logging.getLogger("MetaRegistrationLib")
_noticed: set[str] = set()


def notice_once(message: str) -> bool:
    """Log ``message`` (one line) as a warning on the ``MetaRegistrationLib`` logger, once per process.

    With no logging configured (the ``metareg`` command) Python prints it to stderr as it is; Slicer shows it
    in its Python console. Returns whether it was logged now.
    """
    if message in _noticed:
        return False
    _noticed.add(message)
    logger.warning(message)
    return True


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


class Geometry(NamedTuple):
    """Where an image's voxels lie and where it came from, without its values (a :class:`Volume` also has both)."""

    grid: Grid
    source: str


def _grid_of(image: sitk.Image) -> Grid:
    """The 3D grid of an image; a 4D image's fourth axis (channels) is dropped."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(dim, dim)[:3, :3]
    return Grid.from_arrays(image.GetSize()[:3], image.GetSpacing()[:3], image.GetOrigin()[:3], direction)


def _itk_reason(error: RuntimeError) -> str:
    """The informative line of a SimpleITK exception (not its C++ file and line), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", line) for line in lines
             if not line.startswith("Exception thrown in SimpleITK")]
    detailed = [line for line in lines if not re.search(r"trouble( reading.*)?:?$", line)]
    return ((detailed or lines or ["unknown reason"])[-1])[:200]


def _corrupt(path: Path, detail: str) -> InputError:
    return InputError(f"{path}: cannot be read, the file is truncated or corrupt ({detail})")


def _bad_spacing(path: Path, values, field: str) -> InputError:
    shown = ", ".join(f"{float(v):g}" for v in values)
    return InputError(f"{path}: voxel spacing must be positive, its header gives {shown} mm ({field})")


def _decompressed_head(path: Path, keep: int = 1024) -> tuple[bytes, int]:
    """The first ``keep`` bytes of a gzip file's content and its full length, reading the whole stream (so that
    a stream that ends early, or fails its CRC, is noticed). A file that is not gzip-compressed (ITK reads those
    too, whatever their name) is returned as it is."""
    with open(path, "rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            raw.seek(0)
            return raw.read(keep), path.stat().st_size
    head, length = b"", 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 18):
                if len(head) < keep:
                    head += chunk[: keep - len(head)]
                length += len(chunk)
    except EOFError:
        raise _corrupt(path, "its gzip stream ends early: the file was cut short") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise _corrupt(path, f"gzip: {error}") from None
    return head, length


def _check_nifti(path: Path, head: bytes, length: int) -> None:
    """Voxel data as long as the NIfTI-1/2 header announces, and positive spacing (``pixdim``, sform)."""
    for endian in "<>":
        if len(head) >= 4 and struct.unpack(endian + "i", head[:4])[0] in (348, 540):
            break
    else:
        return  # not a NIfTI header: ITK says what it is not
    version = 1 if struct.unpack(endian + "i", head[:4])[0] == 348 else 2
    needed = 348 if version == 1 else 540
    if len(head) < needed:
        raise _corrupt(path, f"it holds {length} bytes, a NIfTI-{version} header alone needs {needed}")
    if version == 1:
        dim = struct.unpack(endian + "8h", head[40:56])
        bitpix = struct.unpack(endian + "h", head[72:74])[0]
        pixdim = struct.unpack(endian + "8f", head[76:108])
        offset = struct.unpack(endian + "f", head[108:112])[0]
        sform_code = struct.unpack(endian + "h", head[254:256])[0]
        srow = struct.unpack(endian + "12f", head[280:328])
    else:
        bitpix = struct.unpack(endian + "h", head[14:16])[0]
        dim = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        offset = struct.unpack(endian + "q", head[168:176])[0]
        sform_code = struct.unpack(endian + "i", head[348:352])[0]
        srow = struct.unpack(endian + "12d", head[400:496])
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(n < 1 for n in dim[1: ndim + 1]) or bitpix <= 0 or not math.isfinite(offset):
        return  # an invalid header: ITK refuses it with its own reason
    spatial = pixdim[1: min(ndim, 3) + 1]
    if not all(value > 0 for value in spatial):
        raise _bad_spacing(path, spatial, "NIfTI pixdim[1..3]")
    if sform_code > 0:
        columns = [math.sqrt(sum(srow[4 * row + axis] ** 2 for row in range(3))) for axis in range(min(ndim, 3))]
        if not all(value > 0 for value in columns):
            raise _bad_spacing(path, columns, "NIfTI sform axis lengths")
    expected = int(offset) + math.prod(dim[1: ndim + 1]) * bitpix // 8
    if length < expected:
        raise _corrupt(path, f"it holds {length} bytes, its NIfTI header announces {expected}")


_META_ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                       "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                       "MET_DOUBLE": 8}


def _check_metaimage(path: Path) -> None:
    """Positive ``ElementSpacing``, and (uncompressed data) as many data bytes as ``DimSize`` x ``ElementType``."""
    with open(path, "rb") as handle:
        text = handle.read(1 << 16)
    fields, header_bytes = {}, None
    position = 0
    for raw_line in text.splitlines(keepends=True):
        position += len(raw_line)
        key, _, value = raw_line.decode("latin-1").partition("=")
        key, value = key.strip(), value.strip()
        fields[key] = value
        if key == "ElementDataFile":
            header_bytes = position
            break
    try:
        spacing = [float(v) for v in fields.get("ElementSpacing", fields.get("ElementSize", "")).split()]
        sizes = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return  # a malformed header: ITK says what is wrong with it
    if spacing and not all(value > 0 for value in spacing[:3]):
        raise _bad_spacing(path, spacing[:3], "MetaImage ElementSpacing")
    element = _META_ELEMENT_BYTES.get(fields.get("ElementType", ""))
    compressed = fields.get("CompressedData", "False").lower() == "true"
    source = fields.get("ElementDataFile", "")
    if header_bytes is None or element is None or not sizes or compressed:
        return
    expected = math.prod(sizes) * channels * element
    if source == "LOCAL":
        data_file, available = path, path.stat().st_size - header_bytes
    elif source and "%" not in source and " " not in source and source != "LIST":
        data_file = path.parent / source
        if not data_file.is_file():
            raise InputError(f"{path}: its data file {data_file} is not found")
        available = data_file.stat().st_size
    else:
        return
    if available < expected:
        raise _corrupt(data_file, f"it holds {available} bytes of voxel data, the header {path.name} "
                                  f"announces {expected}")


def _check_nrrd(path: Path) -> None:
    """Positive ``spacings`` and non-zero ``space directions`` (ITK reports truncated NRRD data itself)."""
    with open(path, "rb") as handle:
        text = handle.read(1 << 16).decode("latin-1")
    header = text.split("\n\n", 1)[0].splitlines()
    for line in header:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "spacings":
            values = [float(v) for v in value.split() if v.lower() != "nan" and _is_number(v)]
            if not all(v > 0 for v in values):
                raise _bad_spacing(path, values, "NRRD spacings")
        elif key == "space directions":
            vectors = re.findall(r"\(([^)]*)\)", value)
            lengths = []
            for vector in vectors:
                parts = [float(v) for v in vector.split(",") if _is_number(v)]
                lengths.append(math.sqrt(sum(v * v for v in parts)))
            if not all(length > 0 for length in lengths):
                raise _bad_spacing(path, lengths, "NRRD space directions")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_image_file(path: str | Path) -> None:
    """Check what SimpleITK reads without complaint: a complete file and a positive voxel spacing.

    Raises:
        InputError: naming the file if it is truncated or corrupt, or its header gives a zero, negative or
            NaN voxel spacing.
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            if name.endswith(".gz"):
                head, length = _decompressed_head(path)
            else:
                with open(path, "rb") as handle:
                    head, length = handle.read(1024), path.stat().st_size
            _check_nifti(path, head, length)
        elif name.endswith((".mha", ".mhd")):
            _check_metaimage(path)
        elif name.endswith(".nrrd"):
            _check_nrrd(path)
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror or error})") from None


def read_volume(path: str | Path, multichannel: bool = False) -> Volume:
    """Read a 3D image (or, with ``multichannel``, a stack of 3D label channels).

    Multi-channel labels may be stored as a 4D image (channels last, as NIfTI
    does) or as a 3D vector image (as NRRD and MHA do).

    Raises:
        InputError: naming the file if it is missing, unreadable, truncated or corrupt, not 3D, has a zero or
            negative voxel spacing, or holds NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    check_image_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read as an image ({_itk_reason(error)})") from None
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
    grid = _grid_of(image)
    if not all(value > 0 for value in grid.spacing):
        raise _bad_spacing(path, grid.spacing, "as read")
    if abs(np.linalg.det(np.asarray(grid.direction))) < 1e-6:
        raise InputError(f"{path}: its direction matrix is singular (rows {np.round(grid.direction, 3).tolist()})")
    return Volume(np.ascontiguousarray(array), grid, str(path))


def read_labels(path: str | Path) -> Volume:
    """Read a label file (see :func:`read_volume` with ``multichannel``) as values in 0..1.

    The rule (module docstring): a channel whose maximum is above 1 is divided by its maximum; a one-line
    notice names the file and those channels, once.
    """
    volume = read_volume(path, multichannel=True)
    maxima = volume.array.reshape(len(volume.array), -1).max(axis=1)
    scaled = [channel for channel, top in enumerate(maxima) if top > 1]
    if scaled:
        for channel in scaled:
            volume.array[channel] /= maxima[channel]
        tops = ", ".join(f"{channel} (max {maxima[channel]:g})" for channel in scaled)
        notice_once(f"{volume.source}: label values above 1 in channel(s) {tops}: each such channel is divided "
                    "by its maximum (labels are read as 0..1, masks where > 0.5)")
    return volume


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
            for channel in range(1, len(labels.array)):
                if not (labels.array[channel] > 0).any():
                    raise InputError(f"{labels.source}: landmark label channel {channel} is empty (no voxel has "
                                     "a positive value), so it has no position")

    @property
    def landmark_count(self) -> int:
        """Number of landmark channels (channels after the gland)."""
        return len(self.fixed_labels.array) - 1


def _shown(values) -> list:
    return (np.round(np.asarray(values, dtype=float), 4) + 0.0).tolist()  # + 0.0: no "-0.0"


def grid_differences(a: Grid, b: Grid, atol: float = 1e-3) -> list[str]:
    """What differs between two grids (to ``atol``), each as ``name a vs b``; empty when they agree."""
    differences = []
    if a.size != b.size:
        differences.append(f"size {'x'.join(map(str, a.size))} vs {'x'.join(map(str, b.size))} voxels")
    for name in ("spacing", "origin"):
        first, second = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        if not np.allclose(first, second, atol=atol):
            differences.append(f"{name} {_shown(first)} vs {_shown(second)} mm")
    first, second = np.asarray(a.direction), np.asarray(b.direction)
    rows = [row for row in range(3) if not np.allclose(first[row], second[row], atol=atol)]
    if rows:
        shown = "; ".join(f"row {row}: {_shown(first[row])} vs {_shown(second[row])}" for row in rows)
        differences.append(f"direction {shown}")
    return differences


def check_pair(image: Volume, labels: Volume) -> None:
    """Check that an image and its labels share one grid (to 1e-3 mm).

    Raises:
        InputError: naming the labels and the image and saying what differs (size, spacing, origin, or the
            direction rows), labels' value first.
    """
    differences = grid_differences(labels.grid, image.grid)
    if differences:
        raise InputError(f"{labels.source}: its grid differs from the image {image.source} "
                         f"(labels vs image: {', '.join(differences)})")


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

    def __init__(self, root: str | Path, training_domain: Mapping | None = None):
        """Open the data set folder ``root``.

        Args:
            training_domain: what :meth:`load` checks cases against (see :func:`check_training_domain`), e.g. a
                model card's ``training_domain`` record; the library's ``TRAINING_*`` constants when ``None``.
        """
        self.root = Path(root)
        self.training_domain = training_domain
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
        """Case IDs of a named split from ``split.json``.

        Raises:
            InputError: naming ``split.json`` (and the split) if the file is missing, not UTF-8 JSON, not a
                mapping of split names to lists of case-ID strings, or has no split ``name``.
        """
        path = self.root / "split.json"
        if not path.is_file():
            raise InputError(f"{path}: file not found, so split {name!r} is unknown")
        try:
            splits = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{path}: is not a text (UTF-8 JSON) file") from None
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: is not valid JSON ({error})") from None
        if not isinstance(splits, dict):
            raise InputError(f"{path}: must map split names to lists of case IDs, got a JSON {_json_kind(splits)}")
        if name not in splits:
            raise InputError(f"{path}: has no split {name!r} (it has {', '.join(sorted(map(str, splits))) or 'none'})")
        chosen = splits[name]
        if not isinstance(chosen, list):
            raise InputError(f"{path}: split {name!r} must be a list of case IDs, got a JSON {_json_kind(chosen)}")
        wrong = [item for item in chosen if not isinstance(item, str)]
        if wrong:
            raise InputError(f"{path}: split {name!r} must list case IDs as strings, got {wrong[0]!r} "
                             f"(a JSON {_json_kind(wrong[0])})")
        return list(chosen)

    def select(self, split: str | None = None, cases: Sequence[str] | str | None = None) -> list[str]:
        """The requested case IDs, in the order given, each checked to exist in the data set.

        Args:
            split: a split named in ``split.json``; or
            cases: case IDs, as a sequence or one comma-separated string. With neither, every case.

        Raises:
            InputError: if both are given, a split is unknown, a case has not all four files, or nothing is
                selected.
        """
        available = self.case_ids()
        if split is not None and cases is not None:
            raise InputError(f"{self.root}: choose cases by a split or by case IDs, not both")
        if split is not None:
            chosen = self.split(split)
            origin, nothing = f"listed in split {split!r} of split.json", f"split {split!r} of split.json is empty"
        elif cases is not None:
            if isinstance(cases, str):
                cases = cases.split(",")
            chosen = [str(case).strip() for case in cases if str(case).strip()]
            origin, nothing = "asked for", "no case IDs given"
        else:
            chosen, origin, nothing = available, "", "it has no complete case"
        known = set(available)
        missing = [case for case in chosen if case not in known]
        if missing:
            raise InputError(f"{self.root}: has no complete case {', '.join(missing)} ({origin}; each needs "
                             "moving_images, moving_labels, fixed_images and fixed_labels files)")
        if not chosen:
            raise InputError(f"{self.root}: no cases selected ({nothing})")
        return list(dict.fromkeys(chosen))

    def load(self, case_id: str) -> Case:
        """Read and check the four files of a case (labels by :func:`read_labels`); a case far outside the
        training domain is warned about (:func:`check_training_domain`)."""
        case = Case(
            case_id=case_id,
            moving_image=read_volume(find_image(self.root / "moving_images", case_id)),
            moving_labels=read_labels(find_image(self.root / "moving_labels", case_id)),
            fixed_image=read_volume(find_image(self.root / "fixed_images", case_id)),
            fixed_labels=read_labels(find_image(self.root / "fixed_labels", case_id)),
        )
        check_training_domain(case.moving_image, case.fixed_image, self.training_domain)
        return case


def _bounds(value, fallback: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A domain entry as (low, high) per axis (i, j, k): ``{"min": [3], "max": [3]}``, a list of three, or a number;
    ``fallback`` (low = high) for anything else."""
    def three(item):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            return np.full(3, float(item))
        if (isinstance(item, (list, tuple)) and len(item) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)):
            return np.asarray(item, dtype=float)
        return None

    if isinstance(value, Mapping):
        low, high = three(value.get("min")), three(value.get("max"))
        if low is not None and high is not None and np.all(low > 0) and np.all(high >= low):
            return low, high
    single = three(value)
    if single is not None and np.all(single > 0):
        return single, single
    return np.asarray(fallback, dtype=float), np.asarray(fallback, dtype=float)


def _shown_range(low: np.ndarray, high: np.ndarray) -> str:
    text = "x".join(f"{v:g}" for v in low)
    return text if np.allclose(low, high) else f"{text} to {'x'.join(f'{v:g}' for v in high)}"


def training_domain_warnings(moving_image: Volume | Geometry, fixed_image: Volume | Geometry,
                             domain: Mapping | None = None) -> list[str]:
    """One-line warnings for an MR (moving) or TRUS (fixed) image whose voxel spacing or field of view is far from
    the training data's.

    Args:
        moving_image, fixed_image: the images, or only their :class:`Geometry` (grids and sources are used).
        domain: the training domain, as a model card records it (``inputs.training_domain``, written by
            ``metareg-train bundle``): ``fixed_voxel_spacing_mm``, ``fixed_field_of_view_mm``,
            ``moving_voxel_spacing_mm`` and ``moving_field_of_view_mm``, each ``{"min": [i, j, k], "max": [i, j,
            k]}`` (or a list of three, or one number for every axis), and optionally ``tolerance``. A missing entry
            is the library's: :data:`TRAINING_SPACING_MM`, :data:`TRAINING_FIELD_OF_VIEW_MM`,
            :data:`TRAINING_DOMAIN_TOLERANCE`.

    Returns:
        at most one message per image, naming its source and each quantity (spacing, field of view) with an axis
        more than ``tolerance`` times below the training minimum or above the training maximum.
    """
    domain = domain if isinstance(domain, Mapping) else {}
    tolerance = domain.get("tolerance", TRAINING_DOMAIN_TOLERANCE)
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance > 1:
        tolerance = TRAINING_DOMAIN_TOLERANCE
    messages = []
    for side, volume in (("moving", moving_image), ("fixed", fixed_image)):
        grid = volume.grid
        spacing = np.asarray(grid.spacing)
        checks = (("voxel spacing", spacing,
                   _bounds(domain.get(f"{side}_voxel_spacing_mm"), (TRAINING_SPACING_MM,) * 3)),
                  ("field of view", np.asarray(grid.size) * spacing,
                   _bounds(domain.get(f"{side}_field_of_view_mm"), TRAINING_FIELD_OF_VIEW_MM[side])))
        far = [f"{quantity} {'x'.join(f'{v:g}' for v in values)} mm (i, j, k) against the training data's "
               f"{_shown_range(low, high)} mm" for quantity, values, (low, high) in checks
               if np.any(values > high * tolerance) or np.any(values < low / tolerance)]
        if far:
            messages.append(f"{volume.source}: {'; '.join(far)}: over {tolerance:g} times smaller or larger, so "
                            "the model may register it poorly")
    return messages


def check_training_domain(moving_image: Volume | Geometry, fixed_image: Volume | Geometry,
                          domain: Mapping | None = None) -> list[str]:
    """Log each of :func:`training_domain_warnings` once (see :func:`notice_once`); returns them all."""
    messages = training_domain_warnings(moving_image, fixed_image, domain)
    for message in messages:
        notice_once(message)
    return messages


def _json_kind(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def default_data_dir() -> Path:
    """The data set to use when none is given: ``$METAREG_DATA``; else, in a source checkout,
    ``../shared/data/mrus-prostate`` beside the checkout; else (an installed package) ``shared/data/mrus-prostate``
    below the working folder's parent, i.e. ``../shared`` beside the folder the command runs in."""
    configured = os.environ.get("METAREG_DATA")
    if configured:
        return Path(configured)
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "MetaRegistrationLib").is_dir():
        return checkout.parent / "shared" / "data" / "mrus-prostate"
    return Path("..") / "shared" / "data" / "mrus-prostate"
