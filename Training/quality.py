"""``metareg quality``: do the per-update quality signals predict the error, and does the order of the frames
change the result?

Every case is swept (``--frames`` frames) in each of ``--orders``
(:data:`MetaRegistrationLib.updates.SWEEP_ORDERS`); every update's true TRE is measured beside the quality
signals the session showed (:mod:`MetaRegistrationLib.quality`).

Writes in ``--out`` (together, or none): ``updates.csv`` (one row per update:
``MetaRegistrationLib.updates.UPDATE_COLUMNS``), ``quality.md`` (the tables printed) and ``quality_plot.png``
(per frame count, the median TRE and the median spread; and TRE against the spread of every update).
Printed, for the first order: the Spearman correlation of each signal with TRE over all updates, over the updates
at each frame count across cases, and with ``--folds K`` on each of K folds of the cases; TRE by spread
level; and with several orders, each case's spread of the final TRE over the orders (max - min).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from MetaRegistrationLib.data import Dataset
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.evaluation import to_csv
from MetaRegistrationLib.files import check_output_folder, staged_outputs
from MetaRegistrationLib.models import load_model, training_domain
from MetaRegistrationLib.quality import SPREAD_LEVELS_MM
from MetaRegistrationLib.registration import SWEEP_FRAMES
from MetaRegistrationLib.settings import AdaptationSettings, replaced
from MetaRegistrationLib.updates import SWEEP_ORDERS, UPDATE_COLUMNS, UpdateRow, evaluate_updates

from .arguments import adaptation_overrides, add_data_arguments, add_output_arguments

ADAPTATION_FIELDS = tuple(field.name for field in dataclasses.fields(AdaptationSettings))

SIGNALS = (("spread_mm", "jackknife spread (mm)"), ("acquired_dsc", "Dice with the acquired gland"),
           ("change_median_mm", "change since the previous update, median (mm)"), ("fold_pct", "folding (%)"))
"""The signals whose correlation with TRE is reported: column, description."""

OUTPUT_FILES = ("updates.csv", "quality.md", "quality_plot.png")


def orders(text: str) -> list[str]:
    """``--orders right-to-left,random``: distinct names of :data:`SWEEP_ORDERS`, in the order given."""
    names = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    unknown = [name for name in names if name not in SWEEP_ORDERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"sweep orders are some of {', '.join(SWEEP_ORDERS)}, got {text!r}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--frames", type=int, default=SWEEP_FRAMES, help="frames of each sweep (default: %(default)s)")
    parser.add_argument("--orders", type=orders, default=[SWEEP_ORDERS[0]],
                        help=f"acquisition orders, comma-separated, of {', '.join(SWEEP_ORDERS)} (default: "
                             "%(default)s); the correlations use the first")
    parser.add_argument("--model", type=Path, help="model checkpoint (default: bundled)")
    parser.add_argument("--adapt", action="append", default=[], metavar="NAME=VALUE",
                        help=f"override the model's adaptation settings (repeatable), e.g. spread_groups=0 to skip the "
                             f"spread; NAME one of {', '.join(ADAPTATION_FIELDS)}")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="also report the correlations on each of K folds of the cases (K >= 2)")
    add_output_arguments(parser, "output folder (" + ", ".join(OUTPUT_FILES) + ")")


def run(args: argparse.Namespace) -> int:
    if args.frames < 2:
        raise InputError(f"--frames must be at least 2 (the first update needs 2), got {args.frames}")
    if args.folds == 1 or args.folds < 0:
        raise InputError(f"--folds must be 0 (none) or at least 2, got {args.folds}")
    overrides = adaptation_overrides(args.adapt, ADAPTATION_FIELDS)
    check_output_folder(args.out, args.overwrite, protected=(args.data,))
    model = load_model(args.model)
    if overrides:
        model = model._replace(settings=replaced(model.settings, "--adapt", **overrides))
    dataset = Dataset(args.data, training_domain=training_domain(model.card))
    case_ids = dataset.select(args.split, args.cases)
    with tqdm(total=len(case_ids), desc="quality", unit="case", file=sys.stderr, leave=False) as bar:
        rows = evaluate_updates(dataset, case_ids, args.orders, args.frames, model,
                                progress=lambda case_id: (bar.set_postfix(case=case_id), bar.update()))
    command = "metareg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = report(rows, args.orders, args.folds)
    with staged_outputs(args.out) as staging:
        (staging / "updates.csv").write_text(to_csv(rows, UPDATE_COLUMNS), encoding="utf-8")
        (staging / "quality.md").write_text(f"# Quality signals\n\n- Command: `{command}`\n\n{text}", encoding="utf-8")
        (staging / "quality_plot.png").write_bytes(figure([row for row in rows if row.order == args.orders[0]]))
    print(text, end="")
    print(f"Wrote {args.out}/" + ", ".join(OUTPUT_FILES))
    return 0


def _spearman(rows: Sequence[UpdateRow], column: str) -> tuple[float, float, int]:
    """(rho, p, n) of ``column`` against ``tre_mm`` over the rows where both are finite."""
    pairs = [(getattr(r, column), r.tre_mm) for r in rows if math.isfinite(getattr(r, column))
             and math.isfinite(r.tre_mm)]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2:
        return float("nan"), float("nan"), len(pairs)
    result = spearmanr(*zip(*pairs))
    return float(result.statistic), float(result.pvalue), len(pairs)


def _cell(rows: Sequence[UpdateRow], column: str) -> str:
    rho, p, n = _spearman(rows, column)
    return "-" if math.isnan(rho) else f"{rho:+.2f} (p {p:.2g}, n {n})"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines]) + "\n\n"


def report(rows: Sequence[UpdateRow], order_names: Sequence[str], folds: int = 0) -> str:
    """The Markdown tables of the module docstring."""
    first = [r for r in rows if r.order == order_names[0]]
    frame_counts = sorted({r.frames for r in first})
    cases = list(dict.fromkeys(r.case for r in first))
    out = io.StringIO()
    out.write(f"{len(cases)} cases, {order_names[0]} sweeps of {frame_counts[-1]} frames, {len(first)} updates. "
              "Spearman correlation of each signal with the update's true TRE (|phi(c_f) - c_m|, RMS over the "
              "case's landmarks): over all updates, and across cases at each frame count.\n\n")
    header = ["signal", "all updates", *[f"{f} frames" for f in frame_counts]]
    out.write(_table(header, [[description, _cell(first, column),
                               *[_cell([r for r in first if r.frames == f], column) for f in frame_counts]]
                              for column, description in SIGNALS]))
    if folds >= 2 and len(cases) >= folds:
        out.write(f"Over all updates, on each of {folds} folds of the cases (cases dealt in turn):\n\n")
        fold_cases = [set(cases[fold::folds]) for fold in range(folds)]
        out.write(_table(["signal", *[f"fold {n + 1}" for n in range(folds)]],
                         [[description, *[_cell([r for r in first if r.case in held], column) for held in fold_cases]]
                          for column, description in SIGNALS]))
    levels = [name for name, _ in SPREAD_LEVELS_MM] + ["large"]
    limits = ", ".join(f"{name} <= {limit:g} mm" for name, limit in SPREAD_LEVELS_MM)
    out.write(f"TRE by spread level ({limits}, large above), all updates and at {frame_counts[-1]} frames: "
              "median TRE mm (n).\n\n")

    def by_level(selected: Sequence[UpdateRow]) -> list[str]:
        cells = []
        for level in levels:
            tre = [r.tre_mm for r in selected if r.spread_level == level]
            cells.append(f"{np.median(tre):.2f} ({len(tre)})" if tre else "- (0)")
        return cells

    out.write(_table(["updates", *levels], [["all", *by_level(first)],
                                            [f"{frame_counts[-1]} frames",
                                             *by_level([r for r in first if r.frames == frame_counts[-1]])]]))
    alarms = sum(r.fold_alarm for r in first)
    out.write(f"Folding alarms: {alarms} of {len(first)} updates. Overlay change per update (median over cases of "
              "the median change, mm): " + ", ".join(
                  f"{f}: {np.median([r.change_median_mm for r in first if r.frames == f]):.2f}"
                  for f in frame_counts[1:]) + "\n\n")
    if len(order_names) > 1:
        out.write(stability(rows, order_names))
    return out.getvalue()


def stability(rows: Sequence[UpdateRow], order_names: Sequence[str]) -> str:
    """Per case, the final TRE of each order and its spread over the orders (max - min); medians over cases."""
    final = max(r.frames for r in rows)
    by_case: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.frames == final:
            by_case.setdefault(r.case, {})[r.order] = r.tre_mm
    complete = {case: tre for case, tre in by_case.items() if len(tre) == len(order_names)}
    spreads = np.array([max(tre.values()) - min(tre.values()) for tre in complete.values()])
    medians = [f"{np.median([tre[o] for tre in complete.values()]):.2f}" for o in order_names]
    text = (f"Stability over acquisition orders at {final} frames, {len(complete)} cases: median TRE per order "
            f"({', '.join(f'{o} {m}' for o, m in zip(order_names, medians))} mm); per-case spread of the TRE "
            f"over the orders (max - min): median {np.median(spreads):.2f} mm, 90th percentile "
            f"{np.percentile(spreads, 90):.2f} mm.\n\n")
    return text


def figure(rows: Sequence[UpdateRow]) -> bytes:
    """PNG: left, per frame count, the median over cases of TRE and of the spread (twin axes); right, TRE against
    the spread of every update, coloured by frame count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame_counts = sorted({r.frames for r in rows})
    figure_, (per_frame, scatter) = plt.subplots(1, 2, figsize=(10, 4))

    def median(column: str, frames: int) -> float:
        values = [getattr(r, column) for r in rows if r.frames == frames and math.isfinite(getattr(r, column))]
        return float(np.median(values)) if values else float("nan")

    per_frame.plot(frame_counts, [median("tre_mm", f) for f in frame_counts], "o-", color="tab:red", label="TRE")
    per_frame.set_xlabel("frames acquired")
    per_frame.set_ylabel("median TRE (mm)", color="tab:red")
    spread_axis = per_frame.twinx()
    spread_axis.plot(frame_counts, [median("spread_mm", f) for f in frame_counts], "s--", color="tab:blue")
    spread_axis.set_ylabel("median jackknife spread (mm)", color="tab:blue")
    per_frame.set_title("Per frame: TRE and the spread", fontsize=10)
    points = scatter.scatter([r.spread_mm for r in rows], [r.tre_mm for r in rows], c=[r.frames for r in rows],
                             s=10, cmap="viridis", alpha=0.7)
    scatter.set_xscale("log")
    scatter.set_xlabel("jackknife spread (mm, log)")
    scatter.set_ylabel("TRE (mm)")
    scatter.set_title("Every update", fontsize=10)
    figure_.colorbar(points, ax=scatter, label="frames")
    figure_.tight_layout()
    buffer = io.BytesIO()
    figure_.savefig(buffer, format="png", dpi=100)
    plt.close(figure_)
    return buffer.getvalue()
