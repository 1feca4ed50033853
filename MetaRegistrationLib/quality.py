"""Quality signals of one registration update, computed from what the session has (no ground truth).

After every update of an :class:`~.adaptation.AdaptationSession` a clinician sees:

- **folding**: % of TRUS voxels where ``phi`` folds (``metrics.folding_percent``), with an alarm above
  :data:`FOLDING_ALARM_PCT`;
- **acquired-gland Dice**: the warped MR gland against the gland of the frames acquired so far, on the voxels
  those frames cover (how well the registration fits its own evidence);
- **change**: ``|phi(x) - phi_previous(x)|`` in mm over the registered gland (median and 95th percentile): how
  far the overlay moved with this update;
- **spread**: a delete-a-group jackknife over the acquired frames. The frames are dealt in turn into
  :data:`~.settings.AdaptationSettings` ``spread_groups`` groups; each group is left out in turn, the
  registration is recomputed from the rest (initial alignment and network prediction, with the current weights,
  no gradient step), and the spread is the jackknife standard error of ``phi`` over the registered gland::

      spread(x) = sqrt((g - 1) / g * sum_i |phi_-i(x) - mean_i phi_-i(x)|^2),   g = groups that hold frames

  reported as its median over the gland voxels, in mm; named small, medium or large by :func:`spread_level`.

The change and the spread are measured on the TRUS voxels where the MR gland lands under the new ``phi`` (the whole
grid if it lands nowhere); folding on the whole grid, the Dice on the voxels the frames cover. How well each signal
predicts the true TRE is measured by ``metareg quality`` (docs/RESULTS.md, issue 11; Spearman over all updates of
the bundled model's sweeps): the spread does not predict it (+0.04 on val, +0.09 on the train split); the change
weakly does on val only (+0.28; +0.03 on the train split); the acquired-gland Dice weakly does on both (-0.30 on
val, -0.25 on the train split: a poorer fit, a larger error). So none is called a confidence: the spread says how
much the registration depends on which frames were acquired, not how close it is to the truth; the folding alarm is
the one signal to act on (tissue does not fold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the torch-based modules are imported where they are used: the Slicer module reads
    from .geometry import Grid, Transform  # QUALITY_COLUMNS before its dependencies may be installed

FOLDING_ALARM_PCT = 0.1
"""Folding (% of TRUS voxels) above which the alarm rings: tissue does not fold, so any folding in more than a
thousandth of the field is an artefact of the registration (fixed before measuring)."""

SPREAD_LEVELS_MM = (("small", 1.0), ("medium", 2.0))
"""Spread (mm) up to which the spread is "small", then "medium"; "large" above (fixed before measuring)."""

SPREAD_CAVEAT = "the spread does not predict the error (docs/RESULTS.md)"
"""What every front end says beside the spread, after its validation (issue 11)."""

QUALITY_COLUMNS = ("fold_pct", "fold_alarm", "acquired_dsc", "change_median_mm", "change_p95_mm", "spread_mm",
                   "spread_level")
"""The quality signals' columns in every table that shows them (sweep table, web app, ``updates.csv``)."""


@dataclass(frozen=True)
class QualitySignals:
    """The quality of one update (see the module docstring; NaN where not computable).

    Attributes:
        fold_pct: % of TRUS voxels where ``phi`` folds; fold_alarm: ``fold_pct > FOLDING_ALARM_PCT``.
        acquired_dsc: warped MR gland vs the acquired frames' gland, on the covered voxels.
        change_median_mm, change_p95_mm: displacement of ``phi`` since the previous update (NaN at the first).
        spread_mm: median jackknife spread of ``phi`` (NaN with fewer than two frame groups, or none asked).
        spread_level: "small", "medium", "large" from ``spread_mm``, or "" when there is no spread; a name for
            the spread's size, not a confidence (it does not predict the error: module docstring).
    """

    fold_pct: float
    fold_alarm: bool
    acquired_dsc: float
    change_median_mm: float
    change_p95_mm: float
    spread_mm: float
    spread_level: str

    def row(self) -> tuple:
        """The values in :data:`QUALITY_COLUMNS` order (the alarm as 0/1, for numeric tables)."""
        return (self.fold_pct, int(self.fold_alarm), self.acquired_dsc, self.change_median_mm, self.change_p95_mm,
                self.spread_mm, self.spread_level)

    def describe(self) -> str:
        """One line for a status bar."""
        parts = [f"folding {self.fold_pct:.2f} %" + (" (ALARM)" if self.fold_alarm else ""),
                 f"fit to acquired gland {self.acquired_dsc:.2f}"]
        if not math.isnan(self.change_median_mm):
            parts.append(f"moved {self.change_median_mm:.1f} mm (p95 {self.change_p95_mm:.1f})")
        if self.spread_level:
            parts.append(f"spread {self.spread_mm:.1f} mm ({self.spread_level}; {SPREAD_CAVEAT})")
        return ", ".join(parts)


def spread_level(spread_mm: float) -> str:
    """The name of a spread's size in mm (:data:`SPREAD_LEVELS_MM`); "" for NaN."""
    if math.isnan(spread_mm):
        return ""
    for level, limit in SPREAD_LEVELS_MM:
        if spread_mm <= limit:
            return level
    return "large"


def jackknife_spread(mapped: np.ndarray) -> np.ndarray:
    """Per-point jackknife standard error (mm) of leave-one-group-out maps ``mapped`` (g, N, 3); (N,)."""
    groups = mapped.shape[0]
    deviation = mapped - mapped.mean(axis=0)
    return np.sqrt((groups - 1) / groups * (deviation**2).sum(axis=(0, 2)))


def quality_signals(transform: Transform, previous: Transform | None, replicates: Sequence[Transform],
                    moving_gland: np.ndarray, moving_grid: Grid, acquired_gland: np.ndarray,
                    acquired_mask: np.ndarray) -> QualitySignals:
    """The signals of the module docstring for a new registration.

    Args:
        transform: ``phi`` after the update, with its displacement on the TRUS grid.
        previous: ``phi`` after the previous update, or ``None``.
        replicates: the leave-one-group-out registrations (fewer than two: no spread).
        moving_gland: (mk, mj, mi) MR gland on ``moving_grid``.
        acquired_gland, acquired_mask: (k, j, i) the acquired frames' gland and the voxels they cover, on the
            TRUS grid (``transform.grid``).
    """
    from .geometry import resample
    from .metrics import dice, folding_percent

    grid = transform.grid
    warped = resample(moving_gland, moving_grid, transform, grid) > 0.5
    covered = acquired_mask > 0
    acquired_dsc = dice(warped & covered, (acquired_gland > 0.5) & covered)
    region = warped if warped.any() else np.ones(grid.array_shape, dtype=bool)
    mapped = transform.map_grid(grid)[region]  # (N, 3)
    change_median = change_p95 = float("nan")
    if previous is not None:
        change = np.linalg.norm(mapped - previous.map_grid(grid)[region], axis=-1)
        change_median, change_p95 = float(np.median(change)), float(np.percentile(change, 95))
    spread = float("nan")
    if len(replicates) >= 2:
        spread = float(np.median(jackknife_spread(np.stack([r.map_grid(grid)[region] for r in replicates]))))
    fold_pct = folding_percent(transform, grid)
    return QualitySignals(fold_pct, fold_pct > FOLDING_ALARM_PCT, acquired_dsc, change_median, change_p95, spread,
                          spread_level(spread))
