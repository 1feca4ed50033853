"""``metareg evaluate``: batch evaluation with CSV tables, a Markdown report and box plots.

Outputs in ``--out``: ``cases.csv``, ``summary.csv``, ``report.md``,
``tre_boxplot.png`` and ``dsc_boxplot.png``. They appear together at the end or,
if anything fails, not at all. ``--out`` is checked before any case is read: it may not be, or lie in, the data
folder, and an existing folder must be empty unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from MetaRegistrationLib.data import Dataset
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.evaluation import SUMMARY_COLUMNS, evaluate_cases, summarise, to_csv
from MetaRegistrationLib.files import check_output_folder
from MetaRegistrationLib.models import load_model, training_domain
from MetaRegistrationLib.devices import DEVICE_NAMES, torch_device
from MetaRegistrationLib.precision import PRECISIONS, resolve_precision
from MetaRegistrationLib.registration import FRAME_GLANDS, METHODS, get_method
from MetaRegistrationLib.report import OUTPUT_FILES, write_evaluation
from MetaRegistrationLib.settings import AdaptationSettings, replaced

from .arguments import add_data_arguments, add_output_arguments, adaptation_overrides, frame_counts

ADAPTATION_FIELDS = tuple(field.name for field in dataclasses.fields(AdaptationSettings))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--method", required=True, choices=sorted(METHODS), help="registration method")
    parser.add_argument("--model", type=Path,
                        help="model checkpoint (.safetensors/.json pair) for model-based methods (default: bundled)")
    parser.add_argument("--frames", type=frame_counts, default=[],
                        help="frame counts to evaluate for sweep-based methods, e.g. 2-10")
    parser.add_argument("--adapt", action="append", default=[], metavar="NAME=VALUE",
                        help="override the model's adaptation settings for this evaluation (repeatable), e.g. "
                             f"bending_weight=100, learning_rate=0.002; NAME one of {', '.join(ADAPTATION_FIELDS)}")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the network's arithmetic (default: %(default)s: bf16 where the hardware has it)")
    parser.add_argument("--device", default="cpu",
                        help=f"where the network runs: {', '.join(DEVICE_NAMES)} or cuda:N (default: %(default)s)")
    parser.add_argument("--frame-glands", choices=FRAME_GLANDS, default="true",
                        help="a sweep's frame glands: the TRUS label, or predicted by the bundled frame segmenter, "
                             "as in the operating room (default: %(default)s)")
    parser.add_argument("--label", help="name of the method in the tables (default: --method), e.g. for another --model")
    add_output_arguments(parser, "output folder")


def run(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    overrides = adaptation_overrides(args.adapt, ADAPTATION_FIELDS)
    if overrides and not method.uses_model:
        raise InputError(f"--adapt: method {args.method!r} uses no model, so it has no adaptation settings to "
                         "override")
    if args.model is not None and not method.uses_model:
        raise InputError(f"--model: method {args.method!r} uses no model")
    if args.frame_glands != "true" and not method.sweep:
        raise InputError(f"--frame-glands: method {args.method!r} registers the whole TRUS volume; frame glands "
                         "apply to sweep methods")
    if args.frames and not method.sweep:
        raise InputError(f"--frames: method {args.method!r} registers the whole TRUS volume; frame counts apply to "
                         "sweep methods")
    device = torch_device(args.device)  # a device or bf16 this machine lacks fails before any work
    resolve_precision(args.precision, device)
    check_output_folder(args.out, args.overwrite, protected=(args.data,))
    model = None
    if args.model is not None or overrides:
        model = load_model(args.model)  # a bad model fails before any case is read, and is read once
        if overrides:  # the same network with other adaptation settings, in memory
            model = model._replace(settings=replaced(model.settings, "--adapt", **overrides))
    dataset = Dataset(args.data, training_domain=None if model is None else training_domain(model.card))
    case_ids = dataset.select(args.split, args.cases)
    with tqdm(total=len(case_ids), desc=f"evaluate {args.method}", unit="case", file=sys.stderr,
              leave=False) as bar:
        def advance(case_id: str) -> None:
            bar.set_postfix_str(case_id)
            bar.update()

        rows = evaluate_cases(dataset, case_ids, args.method, args.frames, model, progress=advance, label=args.label,
                              precision=args.precision, device=device, frame_glands=args.frame_glands)
    summary = summarise(rows)
    command = "metareg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_evaluation(args.out, rows, summary, command, args.data)
    print(to_csv(summary, SUMMARY_COLUMNS), end="")
    print(f"wrote {args.out}/" + ", ".join(OUTPUT_FILES))
    return 0
