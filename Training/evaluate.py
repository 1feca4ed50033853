"""``metareg evaluate``: batch evaluation with CSV tables, a Markdown report and box plots.

Outputs in ``--out``: ``cases.csv``, ``summary.csv``, ``report.md``,
``tre_boxplot.png`` and ``dsc_boxplot.png``. They appear together at the end or,
if anything fails, not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from MetaRegistrationLib.adaptation import AdaptationSettings  # noqa: E402
from MetaRegistrationLib.data import Dataset, default_data_dir  # noqa: E402
from MetaRegistrationLib.errors import InputError  # noqa: E402
from MetaRegistrationLib.evaluation import (  # noqa: E402
    CASE_COLUMNS,
    SUMMARY_COLUMNS,
    CaseRow,
    SummaryRow,
    evaluate_cases,
    summarise,
    to_csv,
)
from MetaRegistrationLib.files import staged_outputs  # noqa: E402
from MetaRegistrationLib.models import BUNDLED_MODEL, load_model, save_model  # noqa: E402
from MetaRegistrationLib.registration import METHODS  # noqa: E402


def frame_counts(text: str) -> list[int]:
    """Parse ``--frames 2,3,10`` (or a range ``2-10``) into sorted distinct counts >= 1."""
    counts: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            counts.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frame counts like 2,3,10 or 2-10, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"frame counts must be >= 1, got {text!r}")
    return sorted(counts)


def adaptation_override(text: str) -> tuple[str, float | int]:
    """Parse ``--adapt bending_weight=100`` into a field of ``AdaptationSettings`` and its value."""
    fields = {field.name: field.type for field in dataclasses.fields(AdaptationSettings)}
    key, _, value = text.partition("=")
    try:
        parsed = int(value) if fields[key.strip()] in (int, "int") else float(value)
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(fields)}, "
                                         f"got {text!r}") from None
    return key.strip(), parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="data set folder (default: %(default)s)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--split", help="a split named in the data set's split.json, e.g. val")
    which.add_argument("--cases", help="comma-separated case IDs (default: every case)")
    parser.add_argument("--method", required=True, choices=sorted(METHODS), help="registration method")
    parser.add_argument("--model", type=Path,
                        help="model checkpoint (.safetensors/.json pair) for model-based methods (default: bundled)")
    parser.add_argument("--frames", type=frame_counts, default=[],
                        help="frame counts to evaluate for sweep-based methods, e.g. 2-10")
    parser.add_argument("--adapt", type=adaptation_override, action="append", default=[], metavar="NAME=VALUE",
                        help="override the model's adaptation settings for this evaluation (repeatable), e.g. "
                             "bending_weight=100, learning_rate=0.002, updates_per_interaction=2")
    parser.add_argument("--label", help="name of the method in the tables (default: --method), e.g. for another --model")
    parser.add_argument("--out", type=Path, required=True, help="output folder")


def select_cases(dataset: Dataset, split: str | None, cases: str | None) -> list[str]:
    """The requested case IDs, each checked to exist in the data set."""
    available = dataset.case_ids()
    if split:
        chosen = dataset.split(split)
    elif cases:
        chosen = [c.strip() for c in cases.split(",") if c.strip()]
    else:
        chosen = available
    missing = [c for c in chosen if c not in available]
    if missing:
        raise InputError(f"{dataset.root}: no complete case {', '.join(missing)} "
                         "(each needs moving_images, moving_labels, fixed_images and fixed_labels files)")
    if not chosen:
        raise InputError(f"{dataset.root}: no cases selected")
    return chosen


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


def report(rows: Sequence[CaseRow], summary: Sequence[SummaryRow], command: str, data: Path) -> str:
    """The Markdown report: command, summary table, per-case table with HD95 and landmark errors."""
    summary_table = _markdown_table(
        SUMMARY_COLUMNS,
        [[s.method, "" if s.frames is None else str(s.frames), str(s.n), f"{s.median_tre_mm:.2f}",
          f"{s.mean_tre_mm:.2f}", f"{s.sd_tre_mm:.2f}", f"{s.mean_dsc:.3f}", f"{s.sd_dsc:.3f}"] for s in summary])
    case_table = _markdown_table(
        ("case", "method", "frames", "TRE mm", "DSC", "HD95 mm", "folding %", "s", "landmark errors mm"),
        [[r.case, r.method, "" if r.frames is None else str(r.frames), f"{r.tre_mm:.2f}", f"{r.dsc:.3f}",
          f"{r.hd95_mm:.2f}", f"{r.fold_pct:.3f}", f"{r.seconds:.3f}",
          " ".join(f"{e:.1f}" for e in r.landmark_errors_mm)] for r in rows])
    return (f"# Registration evaluation\n\n"
            f"- Command: `{command}`\n- Data: `{data}`\n- Date: {datetime.datetime.now().isoformat(timespec='seconds')}\n\n"
            "TRE: RMS over a case's landmarks of |phi(c_f) - c_m| (mm); DSC: warped MR gland vs TRUS gland "
            "(threshold 0.5); HD95: 95th percentile Hausdorff distance of the glands; folding: % of voxels "
            "with a non-positive Jacobian determinant. sd is the sample standard deviation.\n\n"
            f"## Summary\n\n{summary_table}\n\n![TRE](tre_boxplot.png) ![DSC](dsc_boxplot.png)\n\n"
            f"## Cases\n\n{case_table}\n")


def run(args: argparse.Namespace) -> int:
    dataset = Dataset(args.data)
    case_ids = select_cases(dataset, args.split, args.cases)
    with tqdm(total=len(case_ids), desc=f"evaluate {args.method}", unit="case", file=sys.stderr) as bar:
        def advance(case_id: str) -> None:
            bar.set_postfix_str(case_id)
            bar.update()

        with tempfile.TemporaryDirectory() as folder:
            model = args.model
            if args.adapt:  # the same network with other adaptation settings, as a model of its own
                network, settings, _ = load_model(args.model or BUNDLED_MODEL)
                model = Path(folder) / "model"
                save_model(model, network, dataclasses.replace(settings, **dict(args.adapt)))
            rows = evaluate_cases(dataset, case_ids, args.method, args.frames, model, progress=advance,
                                  label=args.label)
    summary = summarise(rows)
    command = "metareg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with staged_outputs(args.out) as staging:
        (staging / "cases.csv").write_text(to_csv(rows, CASE_COLUMNS))
        (staging / "summary.csv").write_text(to_csv(summary, SUMMARY_COLUMNS))
        (staging / "report.md").write_text(report(rows, summary, command, args.data))
        box_plot(rows, "tre_mm", "TRE (mm)", staging / "tre_boxplot.png")
        box_plot(rows, "dsc", "gland DSC", staging / "dsc_boxplot.png")
    print(to_csv(summary, SUMMARY_COLUMNS), end="")
    print(f"wrote {args.out}/cases.csv, summary.csv, report.md, tre_boxplot.png, dsc_boxplot.png")
    return 0
