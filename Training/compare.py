"""``metareg compare``: paired comparison of two evaluations (Wilcoxon signed-rank on per-case TRE and DSC)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from MetaRegistrationLib.errors import InputError


def read_rows(folder: Path, frames: int | None) -> dict[str, dict[str, str]]:
    """Rows of ``folder/cases.csv`` at ``frames`` (or the rows without frames when ``None``), by case."""
    path = folder / "cases.csv"
    if not path.is_file():
        raise InputError(f"{path}: file not found (run metareg evaluate --out {folder} first)")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    wanted = "" if frames is None else str(frames)
    selected = {row["case"]: row for row in rows if row["frames"] == wanted}
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
        a = np.array([float(first[c][column]) for c in cases])
        b = np.array([float(second[c][column]) for c in cases])
        p = wilcoxon(a, b).pvalue if np.any(a != b) else 1.0
        print(f"{label:<8} {np.median(a):>18.3f} {np.median(b):>18.3f} {np.median(a - b):>12.3f} {p:>8.4f}")
    return 0
