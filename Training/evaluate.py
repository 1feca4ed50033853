"""``metareg evaluate``: batch evaluation with CSV tables, a Markdown report and box plots.

Outputs in ``--out``: ``cases.csv``, ``summary.csv``, ``report.md``,
``tre_boxplot.png`` and ``dsc_boxplot.png``. They appear together at the end or,
if anything fails, not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from MetaRegistrationLib.settings import AdaptationSettings
from MetaRegistrationLib.data import Dataset, default_data_dir
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.evaluation import SUMMARY_COLUMNS, evaluate_cases, summarise, to_csv
from MetaRegistrationLib.models import BUNDLED_MODEL, load_model, save_model
from MetaRegistrationLib.registration import METHODS
from MetaRegistrationLib.report import OUTPUT_FILES, write_evaluation


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
    write_evaluation(args.out, rows, summary, command, args.data)
    print(to_csv(summary, SUMMARY_COLUMNS), end="")
    print(f"wrote {args.out}/" + ", ".join(OUTPUT_FILES))
    return 0
