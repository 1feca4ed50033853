"""``metareg compare``: paired comparison of two evaluations (Wilcoxon signed-rank on per-case TRE and DSC)."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from MetaRegistrationLib.errors import InputError


REQUIRED_COLUMNS = ("case", "method", "frames", "tre_mm", "dsc")
"""Columns of ``cases.csv`` (:data:`MetaRegistrationLib.evaluation.CASE_COLUMNS`) that a comparison reads."""


def read_rows(folder: Path, frames: int | None) -> dict[str, dict[str, str | float]]:
    """Rows of ``folder/cases.csv`` at ``frames`` (or the rows without frames when ``None``), by case, with
    ``tre_mm`` and ``dsc`` as numbers.

    Raises:
        InputError: naming the file (and the row, case and column where one is at fault) for a missing or
            unreadable file, missing columns, a value that is not a finite number, a case listed twice, or no row at
            ``frames``.
    """
    path = folder / "cases.csv"
    if not path.is_file():
        raise InputError(f"{path}: file not found (run metareg evaluate --out {folder} first)")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [column for column in REQUIRED_COLUMNS if column not in columns]
            if missing:
                raise InputError(f"{path}: not a cases.csv of metareg evaluate: missing column(s) "
                                 f"{', '.join(missing)} (it has {', '.join(columns) or 'no header'})")
            rows = list(reader)
    except UnicodeDecodeError:
        raise InputError(f"{path}: is not a text (UTF-8 CSV) file") from None
    except csv.Error as error:
        raise InputError(f"{path}: is not a valid CSV file ({error})") from None
    wanted = "" if frames is None else str(frames)
    selected: dict[str, dict[str, str | float]] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        case = row["case"]
        if None in row:
            raise InputError(f"{path}: line {line} (case {case}): has more fields than the header's {len(columns)}")
        if any(row[column] is None for column in REQUIRED_COLUMNS):
            raise InputError(f"{path}: line {line} (case {case}): has fewer fields than the header's {len(columns)}")
        if row["frames"] != wanted:
            continue
        for column in ("tre_mm", "dsc"):
            try:
                value = float(row[column])
            except ValueError:
                raise InputError(f"{path}: line {line} (case {case}): column {column} is not a number "
                                 f"({row[column]!r})") from None
            if not math.isfinite(value):  # e.g. a case without landmarks has no TRE: it cannot be paired
                raise InputError(f"{path}: line {line} (case {case}): column {column} is {row[column]}, a paired "
                                 "test needs a finite value for every case; leave the case out (--cases)")
            row[column] = value
        if case in selected:
            raise InputError(f"{path}: line {line}: case {case} appears twice at frames = {wanted or '(empty)'}")
        selected[case] = row
    if not selected:
        raise InputError(f"{path}: no rows with frames = {wanted or '(empty)'}")
    return selected


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("first", type=Path, help="output folder of one metareg evaluate run")
    parser.add_argument("second", type=Path, help="output folder of another, on the same cases")
    parser.add_argument("--first-frames", type=int, help="frame count of the first run's rows (none: whole-volume rows)")
    parser.add_argument("--second-frames", type=int, help="frame count of the second run's rows")


def run(args: argparse.Namespace) -> int:
    first = read_rows(args.first, args.first_frames)
    second = read_rows(args.second, args.second_frames)
    cases = sorted(set(first) & set(second))
    if len(cases) < 2:
        raise InputError(f"{args.first} and {args.second} share {len(cases)} case(s); a paired test needs more")
    name_a = f"{next(iter(first.values()))['method']}" + (f"@{args.first_frames}" if args.first_frames else "")
    name_b = f"{next(iter(second.values()))['method']}" + (f"@{args.second_frames}" if args.second_frames else "")
    print(f"{len(cases)} paired cases: {name_a} vs {name_b} (Wilcoxon signed-rank, two-sided)")
    print(f"{'metric':<8} {name_a:>18} {name_b:>18} {'median diff':>12} {'p':>8}")
    for column, label in (("tre_mm", "TRE mm"), ("dsc", "DSC")):
        a = np.array([first[c][column] for c in cases])
        b = np.array([second[c][column] for c in cases])
        p = wilcoxon(a, b).pvalue if np.any(a != b) else 1.0
        print(f"{label:<8} {np.median(a):>18.3f} {np.median(b):>18.3f} {np.median(a - b):>12.3f} {p:>8.4f}")
    return 0
