"""Batch evaluation: run a method over cases and tabulate TRE, DSC and folding.

Used by ``metareg evaluate`` and by the Slicer module's console users alike; the
report and plots are the command line's business (``Training.evaluate``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Dataset
from .metrics import evaluate_transform
from .registration import run_method

CASE_COLUMNS = ("case", "method", "frames", "updates", "tre_mm", "dsc", "fold_pct", "seconds")
SUMMARY_COLUMNS = ("method", "frames", "n", "median_tre_mm", "mean_tre_mm", "sd_tre_mm", "mean_dsc", "sd_dsc")


@dataclass
class CaseRow:
    """One case registered by one method at one evaluation point."""

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


def evaluate_cases(dataset: Dataset, case_ids: Sequence[str], method: str, frame_counts: Sequence[int] = (),
                   model_path: str | Path | None = None,
                   progress: Callable[[str], None] | None = None, label: str | None = None) -> list[CaseRow]:
    """Register and measure every case; ``progress(case_id)`` is called after each case.

    ``label`` names the method in the rows (default: ``method``), e.g. to tell two models apart.
    """
    rows = []
    for case_id in case_ids:
        case = dataset.load(case_id)
        for result in run_method(method, case, frame_counts, model_path):
            metrics = evaluate_transform(case, result.transform)
            rows.append(CaseRow(case_id, label or method, result.frames, result.updates, metrics.tre_mm, metrics.dsc,
                                metrics.fold_pct, result.seconds, metrics.hd95_mm,
                                tuple(float(e) for e in metrics.landmark_errors_mm)))
        if progress is not None:
            progress(case_id)
    return rows


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
        dsc = np.array([r.dsc for r in members])
        summary.append(SummaryRow(method, frames, len(members),
                                  float(np.median(tre)) if len(tre) else float("nan"),
                                  float(np.mean(tre)) if len(tre) else float("nan"), _sd(tre),
                                  float(np.mean(dsc)), _sd(dsc)))
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
