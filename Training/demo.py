"""``metareg demo``: register one case with the current best method, print TRE/DSC, draw a figure.

With no ``--data`` it runs on the library's synthetic MR/TRUS phantom, so it needs
nothing but the installed package; with ``--data`` alone, on the folder's first case
(:func:`MetaRegistrationLib.phantom.open_case`, as ``metareg benchmark`` and the web app open cases).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from MetaRegistrationLib.errors import InputError, naming_the_case
from MetaRegistrationLib.files import check_output_folder, staged_outputs
from MetaRegistrationLib.geometry import Transform
from MetaRegistrationLib.metrics import CaseMetrics, evaluate_transform
from MetaRegistrationLib.phantom import open_case_with_truth
from MetaRegistrationLib.registration import BEST_METHOD, METHODS, run_method

from .arguments import add_output_arguments
from .figures import contour_figure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="data set folder (default: the built-in phantom)")
    parser.add_argument("--case", help="case ID in --data (default: its first case)")
    parser.add_argument("--method", default=BEST_METHOD, choices=sorted(METHODS),
                        help="registration method (default: %(default)s, the current best)")
    add_output_arguments(parser, "output folder (demo.png)", default=Path("demo-output"))


def _line(name: str, metrics: CaseMetrics) -> str:
    return f"{name:<28} {metrics.tre_mm:8.2f} {metrics.dsc:6.3f} {metrics.hd95_mm:8.2f} {metrics.fold_pct:7.2f}"


def run(args: argparse.Namespace) -> int:
    if args.case is not None and args.data is None:
        raise InputError("--case needs --data (the folder the case is in); with neither, the built-in phantom "
                         "is registered")
    check_output_folder(args.out, args.overwrite, protected=(args.data,))
    case, truth = open_case_with_truth(args.data, args.case)
    with naming_the_case(case.case_id):
        *_, final = run_method(args.method, case)  # a sweep method's last result has seen every frame
    results = {"before (identity)": Transform(np.eye(4)), f"after ({args.method})": final.transform}
    if truth is not None:
        results["known true transform"] = truth
    print(f"case {case.case_id}: {case.landmark_count} landmarks; fixed {case.fixed_image.grid.describe()}, "
          f"moving {case.moving_image.grid.describe()}")
    print(f"{'':<28} {'TRE mm':>8} {'DSC':>6} {'HD95 mm':>8} {'fold %':>7}")
    for name, transform in results.items():
        print(_line(name, evaluate_transform(case, transform)))
    if final.frames is None:
        print(f"registration took {final.seconds:.2f} s")
    else:
        print(f"the update and prediction for frame {final.frames} took {final.seconds:.2f} s")
    with staged_outputs(args.out) as staging:
        contour_figure(case, results, staging / "demo.png")
    print(f"wrote {args.out / 'demo.png'}")
    return 0

