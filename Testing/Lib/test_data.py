"""Reading data sets, and clear one-line errors for every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MetaRegistrationLib.data import Dataset, read_volume
from MetaRegistrationLib.errors import InputError

from conftest import write_image


def test_reads_geometry_and_channels(synthetic_dataset):
    case = Dataset(synthetic_dataset).load("a")
    assert case.fixed_image.array.shape == (1, 14, 18, 16)
    assert case.fixed_labels.array.shape == (3, 14, 18, 16)
    assert case.moving_image.grid.origin == (3.0, -1.5, 4.5)
    assert case.landmark_count == 2
    assert Dataset(synthetic_dataset).case_ids() == ["a", "b"]
    assert Dataset(synthetic_dataset).split("val") == ["b"]


def test_reads_vector_nrrd_labels(tmp_path):
    labels = np.random.default_rng(0).random((5, 6, 7, 3)).astype(np.float32)  # (k, j, i, C)
    path = tmp_path / "labels.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(labels, isVector=True), str(path))
    volume = read_volume(path, multichannel=True)
    assert volume.array.shape == (3, 5, 6, 7)
    assert np.allclose(volume.array[2], labels[..., 2])


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("image.nii.gz", lambda p: None, "file not found"),
        ("image.nii.gz", lambda p: p.write_bytes(b"not an image"), "cannot be read"),
        ("image.nii.gz", lambda p: sitk.WriteImage(sitk.Image([5, 5], sitk.sitkFloat32), str(p)), "is 2D"),
        ("image.nii.gz", lambda p: write_image(np.zeros((2, 4, 4, 4), np.float32), p), "is 4D"),
        # ITK's NIfTI reader turns NaN and infinity into 0, so they reach us through NRRD.
        ("image.nrrd", lambda p: write_image(np.full((4, 4, 4), np.inf, np.float32), p), "NaN or infinite"),
        ("image.nrrd", lambda p: write_image(np.full((4, 4, 4), np.nan, np.float32), p), "NaN or infinite"),
    ],
    ids=["missing", "unreadable", "2d", "4d", "inf", "nan"],
)
def test_bad_image_files_are_named(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError, match=message) as caught:
        read_volume(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_label_channel_mismatch(synthetic_dataset):
    path = synthetic_dataset / "fixed_labels" / "a.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    write_image(labels[:2], path)
    with pytest.raises(InputError, match="has 2 label channels but .* has 3"):
        Dataset(synthetic_dataset).load("a")


def test_empty_gland(synthetic_dataset):
    path = synthetic_dataset / "moving_labels" / "a.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    labels[0] = 0
    write_image(labels, path, origin=(3.0, -1.5, 4.5))
    with pytest.raises(InputError, match="gland label \\(channel 0\\) is empty"):
        Dataset(synthetic_dataset).load("a")


def test_label_grid_must_match_image(synthetic_dataset):
    path = synthetic_dataset / "fixed_labels" / "a.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    write_image(labels, path, spacing=(2.0, 2.0, 2.0))
    with pytest.raises(InputError, match="differs from the image"):
        Dataset(synthetic_dataset).load("a")


def test_not_a_dataset(tmp_path):
    with pytest.raises(InputError, match="missing moving_images/"):
        Dataset(tmp_path)
    with pytest.raises(InputError, match="data folder not found"):
        Dataset(tmp_path / "nowhere")
