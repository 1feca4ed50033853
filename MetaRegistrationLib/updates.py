"""Every update of a simulated sweep, measured: the true error beside the quality signals the session showed.

``metareg quality`` uses it to test whether a quality signal predicts the error, and how much the result
depends on the order the frames come in. A sweep's frames are those of ``metareg evaluate``
(:func:`.registration.sweep_frames`: ``count`` planes spread uniformly over the TRUS gland), acquired in one of
:data:`SWEEP_ORDERS`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .data import Case, Dataset
from .errors import InputError, naming_the_case
from .metrics import landmark_centroids, measure
from .models import ModelSource, resolve_model
from .quality import QUALITY_COLUMNS
from .registration import SWEEP_FRAMES, run_sweep, sweep_session
from .sweep import Frame, extract_frame, sweep_positions

SWEEP_ORDERS = ("right-to-left", "left-to-right", "shifted", "random")
"""How a sweep's frames are acquired: the product's convention (from the highest j to the lowest,
:mod:`.sweep`), the reverse, the same direction with every plane one further along it, and a random order (seeded
by the case ID, so every run draws the same)."""

UPDATE_COLUMNS = ("case", "order", "frames", "updates", "tre_mm", "inverse_tre_mm", "dsc", *QUALITY_COLUMNS,
                  "seconds")
"""``updates.csv``: one row per update (TRE both directions as in :mod:`.metrics`; quality: :mod:`.quality`)."""


@dataclass
class UpdateRow:
    """One update of one case's sweep in one order: its true error and its quality signals."""

    case: str
    order: str
    frames: int
    updates: int
    tre_mm: float
    inverse_tre_mm: float
    dsc: float
    fold_pct: float
    fold_alarm: int
    acquired_dsc: float
    change_median_mm: float
    change_p95_mm: float
    spread_mm: float
    spread_level: str
    seconds: float


def _check_order(order: str) -> None:
    if order not in SWEEP_ORDERS:
        raise InputError(f"unknown sweep order {order!r}; choose one of {', '.join(SWEEP_ORDERS)}")


def ordered_frames(case: Case, count: int, order: str) -> list[Frame]:
    """The ``count`` frames of the case's sweep, acquired in ``order`` (one of :data:`SWEEP_ORDERS`)."""
    _check_order(order)
    gland = case.fixed_labels.array[0]
    positions = sweep_positions(gland, count)
    if order == "left-to-right":
        positions = positions[::-1]
    elif order == "shifted":  # each plane sits at the centre of its share of the gland: one voxel off stays
        # inside it while the planes are fewer than half the gland's (a frame outside it would be refused)
        positions = [position - 1 for position in positions]
    elif order == "random":
        positions = list(np.random.default_rng(zlib.crc32(case.case_id.encode())).permutation(positions))
    return [extract_frame(case.fixed_image, gland, int(position)) for position in positions]


def evaluate_updates(dataset: Dataset, case_ids: Sequence[str], orders: Sequence[str] = SWEEP_ORDERS[:1],
                     frames: int = SWEEP_FRAMES, model: ModelSource = None,
                     progress: Callable[[str], None] | None = None) -> list[UpdateRow]:
    """Sweep each case in each order with ``model``'s "meta" session (the bundled model if ``None``); one row per
    update. ``progress(case_id)`` is called after each case."""
    for order in orders:  # before any case is read
        _check_order(order)
    model = resolve_model(model)
    rows = []
    for case_id in case_ids:
        with naming_the_case(case_id):
            case = dataset.load(case_id)
            for order in orders:
                rows += _updates_of(case, order, frames, model)
        if progress is not None:
            progress(case_id)
    return rows


def _updates_of(case: Case, order: str, frames: int, model: ModelSource) -> list[UpdateRow]:
    fixed_points, moving_points = landmark_centroids(case.fixed_labels), landmark_centroids(case.moving_labels)
    rows = []
    for result in run_sweep(sweep_session(case, model), ordered_frames(case, frames, order)):
        metrics = measure(result.transform, case.fixed_image.grid, moving_gland=case.moving_labels.array[0],
                          moving_grid=case.moving_labels.grid, fixed_gland=case.fixed_labels.array[0],
                          fixed_points=fixed_points, moving_points=moving_points, regularity=False)
        rows.append(UpdateRow(case.case_id, order, result.frames, result.updates, metrics.tre_mm,
                              metrics.inverse_tre_mm, metrics.dsc, *result.quality.row(), result.seconds))
    return rows
