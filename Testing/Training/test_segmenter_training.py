"""``metareg-train segmenter``: a run trains, checkpoints, resumes with its own settings and bundles."""

from __future__ import annotations

import pytest

from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.frame_segmenter import SegmenterConfig, load_frame_segmenter
from Training.segmenter import SegmenterTraining, bundle_segmenter, train_segmenter

TINY = SegmenterConfig(features=(4, 4, 8, 8, 16, 4))


def test_a_run_trains_resumes_and_bundles(real_data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    settings = SegmenterTraining(epochs=1, frames_per_epoch=64)
    best = train_segmenter(real_data_dir, run, False, settings, None, TINY)
    card = load_frame_segmenter(best).card
    assert card["provenance"]["epochs_done"] == 1 and len(card["provenance"]["inner_fold_cases"]) >= 12
    assert not set(card["provenance"]["inner_fold_cases"]) & set(card["provenance"]["fitting_cases"])
    with pytest.raises(InputError, match="not empty; use --resume"):
        train_segmenter(real_data_dir, run, False, settings, None, TINY)
    # Resumed with other options: the run's own are kept, and the user is told.
    train_segmenter(real_data_dir, run, True, SegmenterTraining(epochs=2, frames_per_epoch=64), None)
    assert "resumes with its own settings" in capsys.readouterr().out
    assert load_frame_segmenter(run / "latest").card["provenance"]["epochs_done"] == 1
    provenance = bundle_segmenter(run, tmp_path / "bundled", "0.0.1")
    bundled = load_frame_segmenter(tmp_path / "bundled")
    assert bundled.config.features == TINY.features and bundled.card["version"] == "0.0.1"
    assert provenance["best_inner_dice"] == bundled.card["provenance"]["best_inner_dice"]
