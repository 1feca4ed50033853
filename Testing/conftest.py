"""Shared fixtures: tiny synthetic data sets on disk, and the real data when it is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MetaRegistrationLib.settings import AdaptationSettings
from MetaRegistrationLib.data import FOLDERS, default_data_dir
from MetaRegistrationLib.models import save_model
from MetaRegistrationLib.network import NetworkConfig, RegistrationNet


def blob(shape_kji, centre_kji, sigma_vox) -> np.ndarray:
    """A Gaussian blob on an array of shape (k, j, i), peak 1, centred at a voxel position (k, j, i)."""
    grids = np.meshgrid(*(np.arange(n, dtype=float) for n in shape_kji), indexing="ij")
    squared = sum((g - c) ** 2 for g, c in zip(grids, centre_kji))
    return np.exp(-squared / (2 * sigma_vox**2)).astype(np.float32)


def write_image(array: np.ndarray, path: Path, spacing=(1.5, 1.5, 1.5), origin=(0.0, 0.0, 0.0)) -> None:
    """Write a (k, j, i) array as a 3D image, or a (C, k, j, i) array as a 4D label image."""
    if array.ndim == 4:  # channels become the fourth axis, as in the real label files
        image = sitk.JoinSeries([sitk.GetImageFromArray(channel) for channel in array])
    else:
        image = sitk.GetImageFromArray(array)
    extra = image.GetDimension() - 3
    image.SetSpacing(tuple(spacing) + (1.0,) * extra)
    image.SetOrigin(tuple(origin) + (0.0,) * extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def write_synthetic_case(root: Path, case_id: str, shift_mm=(3.0, -1.5, 4.5)) -> None:
    """A tiny case whose MR is the TRUS translated by ``shift_mm``: the true phi is ``x + shift``.

    Both sides hold the same arrays; only the MR grid's origin differs by the shift, so
    every world-coordinate computation has an exact answer.
    """
    shape = (14, 18, 16)  # (k, j, i)
    gland = (blob(shape, (7, 9, 8), 3.5) > 0.4).astype(np.float32)
    labels = np.stack([gland, blob(shape, (6, 8, 7), 1.2), blob(shape, (8, 11, 9), 1.0)])
    image = (60 + 120 * gland + 40 * labels[1]).astype(np.float32)
    for side, origin in (("fixed", (0.0, 0.0, 0.0)), ("moving", tuple(shift_mm))):
        write_image(image, root / f"{side}_images" / f"{case_id}.nii.gz", origin=origin)
        write_image(labels, root / f"{side}_labels" / f"{case_id}.nii.gz", origin=origin)


@pytest.fixture
def synthetic_dataset(tmp_path) -> Path:
    """A data set folder with two tiny cases, ``a`` and ``b``, and a split file."""
    root = tmp_path / "data"
    write_synthetic_case(root, "a")
    write_synthetic_case(root, "b", shift_mm=(-4.5, 3.0, 0.0))
    (root / "split.json").write_text('{"train": ["a"], "val": ["b"]}')
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread: the tensors are tiny, and on a loaded machine two
    OpenMP threads spin-waiting for each other made an adaptation step about 40 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained small network (seed 0) saved as a model, for tests that need one but not the bundled one."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(path, RegistrationNet(NetworkConfig(num_channel_initial=4)), AdaptationSettings())
    return path


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``../shared/data/mrus-prostate``; the test is skipped with the reason when it is absent."""
    root = default_data_dir()
    if not all((root / name).is_dir() for name in FOLDERS):
        pytest.skip(f"real data not found at {root} (set METAREG_DATA or place ../shared beside the checkout)")
    return root


@pytest.fixture
def mrml_scene():
    """A MRML scene set up as 3D Slicer sets up its own: application logic and the module logics the
    MetaRegistration module relies on (segmentations, transforms, markups); needs the ``slicer-core`` wheel.

    Creating the segmentations logic registers the segmentation converter rules, as in Slicer.
    """
    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as a wheel) is not installed")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip(f"the 'slicer' package at {slicer.__file__} is not slicer-core")
    from MetaRegistrationSlicer.conversions import headlessScene

    scene, logics = headlessScene()  # noqa: F841 - the logics live as long as the scene
    yield scene
    scene.Clear(True)
