"""Batch evaluation: run a method over cases and tabulate TRE, DSC and folding.

Used by ``metareg evaluate`` and by the Slicer module's console users alike; the
files they write come from :mod:`.report`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import Case, Dataset
from .errors import naming_the_case
from .landmarks import corrected
from .metrics import evaluate_transform, folding_percent, landmark_centroids, point_errors, rms
from .models import ModelSource, resolve_model
from .registration import SWEEP_FRAMES, get_method, run_method, run_sweep, sweep_frames, sweep_session

PAIR_COLUMNS = ("case", "pairs", "radius_mm", "held_out", "frames", "tre_frames_mm", "tre_pairs_mm", "residual_mm",
                "fold_pct", "seconds", "given_after_frames")
LANDMARK_COLUMNS = ("case", "pairs", "radius_mm", "landmark", "distance_to_pair_mm", "tre_frames_mm", "tre_pairs_mm")
CASE_COLUMNS = ("case", "method", "frames", "updates", "tre_mm", "dsc", "fold_pct", "seconds", "inverse_tre_mm")
SUMMARY_COLUMNS = ("method", "frames", "n", "median_tre_mm", "mean_tre_mm", "sd_tre_mm", "mean_dsc", "sd_dsc",
                   "median_inverse_tre_mm")
"""``tre_mm``: the resampling direction ``|phi(c_f) - c_m|``; ``inverse_tre_mm``: the direction a user sees,
``|phi^-1(c_m) - c_f|`` (:mod:`.metrics`)."""


@dataclass
class CaseRow:
    """One case registered by one method at one evaluation point (TRE in both directions: :mod:`.metrics`)."""

    case: str
    method: str
    frames: int | None
    updates: int | None
    tre_mm: float
    dsc: float
    fold_pct: float
    seconds: float
    hd95_mm: float
    landmark_errors_mm: tuple[float, ...]
    inverse_tre_mm: float = float("nan")


@dataclass
class SummaryRow:
    """Statistics over cases for one method and frame count (sd: sample, ddof=1)."""

    method: str
    frames: int | None
    n: int
    median_tre_mm: float
    mean_tre_mm: float
    sd_tre_mm: float
    mean_dsc: float
    sd_dsc: float
    median_inverse_tre_mm: float = float("nan")


def evaluate_cases(dataset: Dataset, case_ids: Sequence[str], method: str, frame_counts: Sequence[int] = (),
                   model: ModelSource = None,
                   progress: Callable[[str], None] | None = None, label: str | None = None,
                   precision: str = "auto", device: str | torch.device = "cpu", frame_glands: str = "true"
                   ) -> list[CaseRow]:
    """Register and measure every case; ``progress(case_id)`` is called after each case.

    ``model`` is a checkpoint path or a :class:`~.models.Model` in memory (the bundled model if ``None``);
    ``label`` names the method in the rows (default: ``method``), e.g. to tell two models apart; ``precision`` is
    the network's arithmetic (:mod:`~.precision`) and ``device`` where it runs (:mod:`~.devices`);
    ``frame_glands``: a sweep's frame glands from the label or the frame segmenter (:data:`~.registration.FRAME_GLANDS`).
    """
    get_method(method)  # an unknown name fails before any case is read
    if model is not None:
        model = resolve_model(model)  # a bad model file fails before any case is read, and is read once
    rows = []
    for case_id in case_ids:
        with naming_the_case(case_id):
            case = dataset.load(case_id)
            for result in run_method(method, case, frame_counts, model, precision, device, frame_glands):
                metrics = evaluate_transform(case, result.transform)
                rows.append(CaseRow(case_id, label or method, result.frames, result.updates, metrics.tre_mm,
                                    metrics.dsc, metrics.fold_pct, result.seconds, metrics.hd95_mm,
                                    tuple(float(e) for e in metrics.landmark_errors_mm), metrics.inverse_tre_mm))
        if progress is not None:
            progress(case_id)
    return rows


@dataclass
class PairRow:
    """The annotation scenario on one case: TRE (RMS) on the held-out landmarks after the sweep of ``frames``
    frames without pairs, and with ``pairs`` landmark pairs given after frame ``given_after_frames`` (0: before
    the sweep; ``frames``: after it) and the local correction of ``radius_mm`` (0: the network alone);
    ``residual_mm``: the median of the given pairs' ``|phi(p_TRUS) - p_MR|`` at the end; ``fold_pct``: folding of
    the registration at the end; ``seconds``: the last interaction."""

    case: str
    pairs: int
    radius_mm: float
    held_out: int
    frames: int
    tre_frames_mm: float
    tre_pairs_mm: float
    residual_mm: float
    fold_pct: float
    seconds: float
    given_after_frames: int


@dataclass
class LandmarkRow:
    """One held-out landmark of a :class:`PairRow`: its own error (mm) before and after the pairs, and its distance
    on the TRUS to the nearest given pair (``landmark``: its label channel)."""

    case: str
    pairs: int
    radius_mm: float
    landmark: int
    distance_to_pair_mm: float
    tre_frames_mm: float
    tre_pairs_mm: float


def evaluate_landmark_pairs(dataset: Dataset, case_ids: Sequence[str], pair_counts: Sequence[int] = (1,),
                            model: ModelSource = None, frames: int = SWEEP_FRAMES, radii: Sequence[float] = (),
                            progress: Callable[[str], None] | None = None, given_after: int | None = None
                            ) -> tuple[list[PairRow], list[LandmarkRow]]:
    """What clinician landmark pairs buy in a sweep of ``frames`` frames (``method`` "meta").

    The clinician adds pairs one at a time, each an interaction: here the centroids of the case's landmark labels
    1, 2, ... in order, after frame ``given_after`` of the sweep (0: before the first frame; the default,
    ``frames``: after the sweep), and the sweep goes on. TRE is measured at the end on the landmarks not given,
    against the same sweep without pairs, so a pair is never scored on itself. A case is left out of a pair count
    that leaves no landmark to hold out.

    ``radii`` (mm) are the local corrections to measure (0: none), by default the model's
    ``landmark_radius_mm``. They are measured from one session: the session runs without the correction (which
    changes nothing the network does) and each radius corrects the network's registration as the session's own
    prediction would (:func:`.landmarks.corrected`).
    """
    counts = sorted(set(pair_counts))
    if not counts or counts[0] < 1:
        raise ValueError(f"pair counts must be >= 1, got {list(pair_counts)}")
    given_after = frames if given_after is None else given_after
    if not 0 <= given_after <= frames:
        raise ValueError(f"pairs are given after 0 to {frames} frames, got {given_after}")
    model = resolve_model(model)
    radii = list(radii) or [model.settings.landmark_radius_mm]
    network_only = model._replace(settings=dataclasses.replace(model.settings, landmark_radius_mm=0.0))
    pairs, landmarks = [], []
    for case_id in case_ids:
        with naming_the_case(case_id):
            case_pairs, case_landmarks = _landmark_pairs_of(dataset.load(case_id), counts, network_only, frames, radii,
                                                            given_after)
        pairs += case_pairs
        landmarks += case_landmarks
        if progress is not None:
            progress(case_id)
    return pairs, landmarks


def _landmark_pairs_of(case: Case, counts: Sequence[int], model: ModelSource, frames: int, radii: Sequence[float],
                       given_after: int) -> tuple[list[PairRow], list[LandmarkRow]]:
    moving, fixed = landmark_centroids(case.moving_labels), landmark_centroids(case.fixed_labels)
    sweep = sweep_frames(case, frames)
    session = sweep_session(case, model, spread=False)
    after_sweep = list(run_sweep(session, sweep))[-1].transform
    before = point_errors(after_sweep, fixed, moving)
    pairs, landmarks, given = [], [], 0
    for count in counts:
        if count >= len(fixed):
            break
        if given_after < frames:  # a new sweep per count, the pairs coming part-way
            result = _sweep_with_pairs(case, model, sweep, given_after, moving[:count], fixed[:count])
        while given_after == frames and given < count:  # the same session goes on: one pair more at a time
            result = session.add_landmarks(moving[given][None], fixed[given][None])
            given += 1
        distances = np.linalg.norm(fixed[count:, None] - fixed[None, :count], axis=-1).min(axis=1)
        for radius in radii:
            transform = corrected(result.transform, fixed[:count], moving[:count], radius)[0] if radius > 0 \
                else result.transform
            after = point_errors(transform, fixed, moving)
            pairs.append(PairRow(case.case_id, count, radius, len(fixed) - count, frames, rms(before[count:]),
                                 rms(after[count:]), float(np.median(after[:count])),
                                 folding_percent(transform, case.fixed_image.grid), result.seconds, given_after))
            landmarks += [LandmarkRow(case.case_id, count, radius, count + 1 + n, float(distance),
                                      float(before[count + n]), float(after[count + n]))
                          for n, distance in enumerate(distances)]
    return pairs, landmarks


def _sweep_with_pairs(case: Case, model: ModelSource, sweep: Sequence, given_after: int, moving: np.ndarray,
                      fixed: np.ndarray):
    """The last result of a sweep whose pairs ``(moving, fixed)`` (N, 3) come one at a time after frame
    ``given_after`` (< the sweep's length), each frame an interaction as in :func:`.registration.run_sweep`."""
    session = sweep_session(case, model, spread=False)
    for frame in sweep[:given_after]:
        session.add_frames([frame])
    for moving_point, fixed_point in zip(moving, fixed):
        session.add_landmarks(moving_point[None], fixed_point[None])
    for frame in sweep[given_after:]:
        result = session.add_frames([frame])
    return result


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def summarise(rows: Sequence[CaseRow]) -> list[SummaryRow]:
    """One summary row per (method, frames), in first-seen order."""
    groups: dict[tuple[str, int | None], list[CaseRow]] = {}
    for row in rows:
        groups.setdefault((row.method, row.frames), []).append(row)
    summary = []
    for (method, frames), members in groups.items():
        tre = np.array([r.tre_mm for r in members if not math.isnan(r.tre_mm)])
        inverse = np.array([r.inverse_tre_mm for r in members if not math.isnan(r.inverse_tre_mm)])
        dsc = np.array([r.dsc for r in members])
        summary.append(SummaryRow(method, frames, len(members),
                                  float(np.median(tre)) if len(tre) else float("nan"),
                                  float(np.mean(tre)) if len(tre) else float("nan"), _sd(tre),
                                  float(np.mean(dsc)), _sd(dsc),
                                  float(np.median(inverse)) if len(inverse) else float("nan")))
    return summary


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def to_csv(rows: Sequence[CaseRow] | Sequence[SummaryRow], columns: Sequence[str]) -> str:
    """CSV text with exactly ``columns`` as header; ``None`` is written as an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(getattr(row, column)) for column in columns])
    return buffer.getvalue()
