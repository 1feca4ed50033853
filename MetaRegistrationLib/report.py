"""The written outputs of a batch evaluation: CSV tables, a Markdown report and box plots.

``metareg evaluate`` and the Slicer module's ``evaluateFolder`` both write them with :func:`write_evaluation`, so
a console user gets exactly what the command line gives.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from .evaluation import CASE_COLUMNS, SUMMARY_COLUMNS, CaseRow, SummaryRow, to_csv  # noqa: E402
from .files import staged_outputs  # noqa: E402

OUTPUT_FILES = ("cases.csv", "summary.csv", "report.md", "tre_boxplot.png", "dsc_boxplot.png")
"""What :func:`write_evaluation` writes into its folder."""


def write_evaluation(folder: str | Path, rows: Sequence[CaseRow], summary: Sequence[SummaryRow], command: str,
                     data: str | Path) -> None:
    """Write :data:`OUTPUT_FILES` into ``folder``: all of them, or (on any error) none.

    ``command`` is how the evaluation was asked for, ``data`` the data folder; both go into the report.
    """
    with staged_outputs(folder) as staging:
        (staging / "cases.csv").write_text(to_csv(rows, CASE_COLUMNS))
        (staging / "summary.csv").write_text(to_csv(summary, SUMMARY_COLUMNS))
        (staging / "report.md").write_text(markdown_report(rows, summary, command, Path(data)))
        box_plot(rows, "tre_mm", "TRE (mm)", staging / "tre_boxplot.png")
        box_plot(rows, "dsc", "gland DSC", staging / "dsc_boxplot.png")


def _group_label(method: str, frames: int | None) -> str:
    return method if frames is None else f"{method}\n{frames} fr"


def box_plot(rows: Sequence[CaseRow], field: str, ylabel: str, path: Path) -> None:
    """One box per (method, frames) group of ``rows``, with the cases as dots."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        groups.setdefault(_group_label(row.method, row.frames), []).append(getattr(row, field))
    figure, axes = plt.subplots(figsize=(max(4.0, 1.1 * len(groups) + 2), 4))
    axes.boxplot(list(groups.values()), tick_labels=list(groups))
    for position, values in enumerate(groups.values(), start=1):
        axes.plot([position] * len(values), values, ".", color="tab:blue", alpha=0.6)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(rows: Sequence[CaseRow], summary: Sequence[SummaryRow], command: str, data: Path) -> str:
    """The Markdown report: command, summary table, per-case table with HD95 and landmark errors."""
    summary_table = _markdown_table(
        SUMMARY_COLUMNS,
        [[s.method, "" if s.frames is None else str(s.frames), str(s.n), f"{s.median_tre_mm:.2f}",
          f"{s.mean_tre_mm:.2f}", f"{s.sd_tre_mm:.2f}", f"{s.mean_dsc:.3f}", f"{s.sd_dsc:.3f}",
          f"{s.median_inverse_tre_mm:.2f}"] for s in summary])
    case_table = _markdown_table(
        ("case", "method", "frames", "TRE mm", "inverse TRE mm", "DSC", "HD95 mm", "folding %", "s",
         "landmark errors mm"),
        [[r.case, r.method, "" if r.frames is None else str(r.frames), f"{r.tre_mm:.2f}", f"{r.inverse_tre_mm:.2f}",
          f"{r.dsc:.3f}", f"{r.hd95_mm:.2f}", f"{r.fold_pct:.3f}", f"{r.seconds:.3f}",
          " ".join(f"{e:.1f}" for e in r.landmark_errors_mm)] for r in rows])
    return (f"# Registration evaluation\n\n"
            f"- Command: `{command}`\n- Data: `{data}`\n- Date: {datetime.datetime.now().isoformat(timespec='seconds')}\n\n"
            "TRE: RMS over a case's landmarks of |phi(c_f) - c_m| (mm), the resampling direction; inverse TRE: "
            "RMS of |phi^-1(c_m) - c_f| (mm), what a user sees with the MR landmarks under the registration; "
            "DSC: warped MR gland vs TRUS gland "
            "(threshold 0.5); HD95: 95th percentile Hausdorff distance of the glands; folding: % of voxels "
            "with a non-positive Jacobian determinant. sd is the sample standard deviation.\n\n"
            f"## Summary\n\n{summary_table}\n\n![TRE](tre_boxplot.png) ![DSC](dsc_boxplot.png)\n\n"
            f"## Cases\n\n{case_table}\n")
