"""The bundled frame segmenter (MetaRegistrationLib.frame_segmenter): loading, shapes, spacing, failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MetaRegistrationLib.data import Dataset
from MetaRegistrationLib.errors import CheckpointError, InputError
from MetaRegistrationLib.frame_segmenter import (BUNDLED_FRAME_SEGMENTER, SegmenterConfig, SegmenterNet,
                                                 largest_region, load_frame_segmenter, normalise_intensity,
                                                 save_frame_segmenter)
from MetaRegistrationLib.metrics import dice
from MetaRegistrationLib.models import BUNDLED_MODEL
from MetaRegistrationLib.registration import sweep_frames


@pytest.fixture(scope="module")
def segmenter():
    return load_frame_segmenter()


def test_the_bundled_segmenter_finds_the_gland_on_a_val_sweeps_central_frames(segmenter, real_data_dir):
    dataset = Dataset(real_data_dir)
    case = dataset.load(dataset.split("val")[0])
    frames = sweep_frames(case, 10)
    scores = [dice(segmenter.segment(frame.image, frame.spacing), frame.gland) for frame in frames[3:7]]
    assert min(scores) > 0.7, scores
    predicted = segmenter.segment_frame(frames[5])
    assert predicted.image is frames[5].image and np.array_equal(predicted.pose, frames[5].pose)
    assert predicted.gland.shape == frames[5].image.shape and set(np.unique(predicted.gland)) <= {0.0, 1.0}


def test_a_frame_of_finer_pixels_is_segmented_at_the_training_pixel_size(segmenter, real_data_dir):
    """The same frame upsampled to 0.75 mm pixels gives (nearly) the same gland, on its own pixels."""
    dataset = Dataset(real_data_dir)
    frame = sweep_frames(dataset.load(dataset.split("val")[0]), 10)[5]
    fine = torch.nn.functional.interpolate(torch.from_numpy(frame.image)[None, None], scale_factor=2,
                                           mode="bilinear", align_corners=False)[0, 0].numpy()
    coarse_gland = segmenter.segment(frame.image, frame.spacing)
    fine_gland = segmenter.segment(fine, (frame.spacing[0] / 2, frame.spacing[1] / 2))
    assert fine_gland.shape == fine.shape
    assert dice(fine_gland[::2, ::2], coarse_gland) > 0.85


def test_intensity_scaling_and_the_largest_region():
    assert not normalise_intensity(np.full((4, 5), 7.0)).any()
    scaled = normalise_intensity(np.arange(100.0).reshape(10, 10))
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True
    mask[3:6, 3:6] = True
    assert largest_region(mask).sum() == 9 and not largest_region(mask)[0, 0]


def test_a_card_that_is_not_a_segmenter_is_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="does not build a network|not a frame segmenter"):
        load_frame_segmenter(BUNDLED_MODEL)
    stem = tmp_path / "segmenter"
    save_frame_segmenter(stem, SegmenterNet(SegmenterConfig(features=(4, 4, 8, 8, 16, 4))))
    assert load_frame_segmenter(stem).config.features == (4, 4, 8, 8, 16, 4)
    with pytest.raises(InputError, match="2D"):
        load_frame_segmenter(stem).segment(np.zeros((2, 3, 4)))


def test_the_bundled_segmenter_is_the_package_data():
    assert BUNDLED_FRAME_SEGMENTER.with_suffix(".json").is_file()
