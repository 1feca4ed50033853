"""Figures for people: the warped MR gland contour over TRUS sagittal slices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from MetaRegistrationLib.data import Case  # noqa: E402
from MetaRegistrationLib.geometry import Transform, resample  # noqa: E402
from MetaRegistrationLib.sweep import SAGITTAL_AXIS, sweep_positions  # noqa: E402


def contour_figure(case: Case, results: dict[str, Transform], path: Path, slices: int = 3) -> None:
    """One row per result: TRUS sagittal slices through the gland, TRUS gland in yellow,
    the MR gland warped by that result in red.

    Args:
        results: row title -> transform (e.g. {"before (identity)": ..., "after (centroid)": ...}).
    """
    grid = case.fixed_image.grid
    fixed_gland = case.fixed_labels.array[0]
    positions = sweep_positions(fixed_gland, slices + 2)[1:-1]  # inner planes: the gland's edges show little
    figure, axes = plt.subplots(len(results), slices, figsize=(3.2 * slices, 3.0 * len(results)), squeeze=False)
    for row, (title, transform) in enumerate(results.items()):
        warped = resample(case.moving_labels.array[0], case.moving_labels.grid, transform, grid)
        for column, position in enumerate(positions):
            image, trus, mr = (np.take(volume, position, axis=SAGITTAL_AXIS)
                               for volume in (case.fixed_image.array[0], fixed_gland, warped))
            axis = axes[row, column]
            # Rows of a (k, i) plane are k (the probe axis); show it vertically, depth horizontally.
            axis.imshow(image, cmap="gray", origin="lower")
            axis.contour(trus, [0.5], colors="yellow", linewidths=1.2)
            axis.contour(mr, [0.5], colors="red", linewidths=1.2)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{title}\nsagittal plane {position}" if column == 0 else f"sagittal plane {position}",
                           fontsize=9)
    figure.suptitle(f"{case.case_id}: TRUS gland (yellow), warped MR gland (red)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
