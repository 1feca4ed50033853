"""Reading data sets, and clear one-line errors for every kind of bad input."""

from __future__ import annotations

import gzip
import logging
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from MetaRegistrationLib.data import (Case, Dataset, Volume, check_training_domain, read_volume,
                                      training_domain_warnings)
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.geometry import Grid

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


# --- case selection ---------------------------------------------------------------------------------------------

def test_select_every_case_a_split_or_given_ids(synthetic_dataset):
    dataset = Dataset(synthetic_dataset)
    assert dataset.select() == ["a", "b"]
    assert dataset.select(split="val") == ["b"]
    assert dataset.select(cases="b, a") == ["b", "a"]
    assert dataset.select(cases=["a", "a"]) == ["a"]


@pytest.mark.parametrize(
    "split, cases, message",
    [
        (None, "a,zzz,yyy", "has no complete case zzz, yyy \\(asked for"),
        (None, " , ", "no cases selected \\(no case IDs given\\)"),
        ("empty", None, "no cases selected \\(split 'empty' of split.json is empty\\)"),
        ("stale", None, "has no complete case gone \\(listed in split 'stale'"),
        ("val", "a", "not both"),
    ],
    ids=["missing", "blank", "empty-split", "stale-split", "both"],
)
def test_select_names_what_is_missing(synthetic_dataset, split, cases, message):
    (synthetic_dataset / "split.json").write_text('{"val": ["b"], "empty": [], "stale": ["a", "gone"]}')
    with pytest.raises(InputError, match=message) as caught:
        Dataset(synthetic_dataset).select(split, cases)
    assert str(synthetic_dataset) in str(caught.value) and "\n" not in str(caught.value)


def test_select_refuses_a_data_set_without_cases(synthetic_dataset):
    for path in (synthetic_dataset / "fixed_images").iterdir():
        path.unlink()
    with pytest.raises(InputError, match="no cases selected \\(it has no complete case\\)"):
        Dataset(synthetic_dataset).select()


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"train": ["a"], "val": null}', "split 'val' must be a list of case IDs, got a JSON null"),
        (b"\xff\xfe\x00\x81binary", "is not a text \\(UTF-8 JSON\\) file"),
        (b'{"val": "ab"}', "split 'val' must be a list of case IDs, got a JSON string"),
        (b'{"val": ["a", 2]}', "split 'val' must list case IDs as strings, got 2"),
        (b'["a", "b"]', "must map split names to lists of case IDs, got a JSON array"),
        (b'{"val": [', "is not valid JSON"),
    ],
    ids=["null", "binary", "string", "number-id", "array", "broken"],
)
def test_bad_split_files_are_one_line_errors_naming_the_file(synthetic_dataset, content, message):
    (synthetic_dataset / "split.json").write_bytes(content)
    with pytest.raises(InputError, match=message) as caught:
        Dataset(synthetic_dataset).select(split="val")
    assert str(synthetic_dataset / "split.json") in str(caught.value) and "\n" not in str(caught.value)


# --- truncated and corrupt files, voxel spacing --------------------------------------------------------------------

def _cut_at_half(path):
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _saved(tmp_path, name, **kwargs):
    path = tmp_path / name
    write_image(np.random.default_rng(0).random((12, 14, 16)).astype(np.float32), path, **kwargs)
    return path


@pytest.mark.parametrize("name", ["image.nii.gz", "image.nii", "image.mha", "image.mhd", "image.nrrd"])
def test_truncated_files_are_refused_naming_the_file(tmp_path, name):
    path = _saved(tmp_path, name)
    data_file = path.with_suffix(".raw") if name.endswith(".mhd") else path
    _cut_at_half(data_file)
    with pytest.raises(InputError, match="truncated or corrupt|fread got only") as caught:
        read_volume(path)
    message = str(caught.value)
    assert str(data_file) in message and "\n" not in message and "itk" not in message.lower()


def test_a_corrupt_gzip_stream_is_refused(tmp_path):
    path = _saved(tmp_path, "image.nii.gz")
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF  # a flipped byte: bad deflate data, or a failed CRC
    path.write_bytes(bytes(content))
    with pytest.raises(InputError, match="truncated or corrupt") as caught:
        read_volume(path)
    assert str(path) in str(caught.value)


def test_an_uncompressed_file_named_nii_gz_is_still_read(tmp_path):
    path = _saved(tmp_path, "image.nii")
    renamed = path.rename(tmp_path / "plain.nii.gz")
    assert read_volume(renamed).array.shape == (1, 12, 14, 16)


def _nifti_with_pixdim(tmp_path, name, value):
    path = _saved(tmp_path, "source.nii")
    content = bytearray(path.read_bytes())
    content[80:84] = struct.pack("<f", value)  # pixdim[1], the spacing along i
    target = tmp_path / name
    target.write_bytes(gzip.compress(bytes(content)) if name.endswith(".gz") else bytes(content))
    return target


@pytest.mark.parametrize("value", [0.0, -1.5, float("nan")])
@pytest.mark.parametrize("name", ["image.nii.gz", "image.nii"])
def test_zero_or_negative_nifti_spacing_is_refused(tmp_path, name, value):
    path = _nifti_with_pixdim(tmp_path, name, value)
    with pytest.raises(InputError, match="voxel spacing must be positive.*NIfTI pixdim") as caught:
        read_volume(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("spacing", [b"0 1.5 1.5", b"-1.5 1.5 1.5"])
def test_zero_or_negative_metaimage_spacing_is_refused(tmp_path, spacing):
    path = _saved(tmp_path, "image.mha")
    content = path.read_bytes()
    assert b"ElementSpacing = 1.5 1.5 1.5" in content
    path.write_bytes(content.replace(b"ElementSpacing = 1.5 1.5 1.5", b"ElementSpacing = " + spacing, 1))
    with pytest.raises(InputError, match="voxel spacing must be positive.*MetaImage ElementSpacing") as caught:
        read_volume(path)
    assert str(path) in str(caught.value)


# --- label values -----------------------------------------------------------------------------------------------

def test_labels_above_one_are_divided_by_their_maximum_with_one_notice(synthetic_dataset, caplog):
    path = synthetic_dataset / "fixed_labels" / "a.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (C, k, j, i), 0..1
    scaled = labels.copy()
    scaled[0] = (labels[0] > 0.5) * 255.0  # a 0/255 mask
    scaled[1] = labels[1] * 255.0  # a graded 0..255 map
    write_image(scaled, path)
    dataset = Dataset(synthetic_dataset)
    with caplog.at_level(logging.WARNING, logger="MetaRegistrationLib"):
        case = dataset.load("a")
        dataset.load("a")
    assert np.array_equal(case.fixed_labels.array[0], (labels[0] > 0.5).astype(np.float32))
    assert np.allclose(case.fixed_labels.array[1], labels[1] / labels[1].max(), atol=1e-6)
    assert np.array_equal(case.fixed_labels.array[2], labels[2])  # already 0..1: untouched
    notices = [record.getMessage() for record in caplog.records if "divided by its maximum" in record.getMessage()]
    assert len(notices) == 1 and str(path) in notices[0] and "channel(s) 0 (max 255), 1 (max 255)" in notices[0]


# --- messages that name the file, the channel and the difference ----------------------------------------------------

def test_empty_landmark_channel_names_the_file_and_the_channel(synthetic_dataset):
    path = synthetic_dataset / "moving_labels" / "a.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    labels[2] = 0
    write_image(labels, path, origin=(3.0, -1.5, 4.5))
    with pytest.raises(InputError, match="landmark label channel 2 is empty") as caught:
        Dataset(synthetic_dataset).load("a")
    assert str(caught.value).startswith(str(path))


def test_a_grid_differing_only_in_direction_says_how(synthetic_dataset):
    path = synthetic_dataset / "fixed_labels" / "a.nii.gz"
    image = sitk.ReadImage(str(path))
    direction = np.eye(4)
    direction[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]  # i and j rotated by 90 degrees
    image.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputError, match="differs from the image") as caught:
        Dataset(synthetic_dataset).load("a")
    message = str(caught.value)
    assert "direction row 0: [0.0, -1.0, 0.0] vs [1.0, 0.0, 0.0]" in message
    assert "origin" not in message and "spacing" not in message and "\n" not in message


# --- training domain ----------------------------------------------------------------------------------------------

def test_far_from_training_spacing_is_warned_once(synthetic_dataset, caplog):
    case = Dataset(synthetic_dataset).load("a")
    coarse = Grid.from_arrays(case.fixed_image.grid.size, (6.0, 6.0, 6.0), (0, 0, 0))
    far = Case("a", case.moving_image, case.moving_labels, Volume(case.fixed_image.array, coarse, "coarse TRUS"),
               Volume(case.fixed_labels.array, coarse, "coarse TRUS labels"))
    messages = [m for m in training_domain_warnings(far.moving_image, far.fixed_image) if m.startswith("coarse")]
    assert len(messages) == 1  # one line per image, spacing and field of view together
    assert messages[0].startswith("coarse TRUS: voxel spacing 6x6x6 mm") and "1.5x1.5x1.5" in messages[0]
    assert "\n" not in messages[0]
    # A model card's record replaces the library's constants.
    record = {"fixed_voxel_spacing_mm": {"min": [5.0, 5.0, 5.0], "max": [6.0, 6.0, 6.5]},
              "fixed_field_of_view_mm": {"min": [90.0, 100.0, 80.0], "max": [96.0, 108.0, 84.0]}}
    assert not [m for m in training_domain_warnings(far.moving_image, far.fixed_image, record) if m.startswith("coarse TRUS")]
    record["fixed_voxel_spacing_mm"] = {"min": [1.0, 1.0, 1.0], "max": [1.5, 1.5, 1.9]}
    assert any("training data's 1x1x1 to 1.5x1.5x1.9 mm" in m for m in training_domain_warnings(far.moving_image, far.fixed_image, record))
    with caplog.at_level(logging.WARNING, logger="MetaRegistrationLib"):
        check_training_domain(far.moving_image, far.fixed_image)
        check_training_domain(far.moving_image, far.fixed_image)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("coarse TRUS: voxel spacing")]
    assert len(logged) == 1


@pytest.mark.real_data
def test_real_cases_are_inside_the_training_domain(real_data_dir):
    case = Dataset(real_data_dir).load("obs000")
    assert training_domain_warnings(case.moving_image, case.fixed_image) == []
    assert case.fixed_labels.array.max() == 1.0
