"""``metareg pairs``: what clinician landmark pairs buy after a sweep (the annotation scenario).

After a sweep of ``--frames`` frames, landmark pairs (the centroids of each case's landmark labels 1, 2, ...)
are added one at a time as interactions; TRE is measured on the landmarks not given. With ``--pairs-after N``
the pairs come after frame N instead (0: before the sweep) and the sweep goes on; TRE is measured at its end.
``--radius`` lists the local corrections to measure side by side (mm, 0 for the network alone; default: the model's
``landmark_radius_mm``), all from the same sessions (:func:`~MetaRegistrationLib.evaluation.evaluate_landmark_pairs`).

Writes in ``--out``: ``pairs.csv`` (one row per case, pair count and radius:
``MetaRegistrationLib.evaluation.PAIR_COLUMNS``), ``pairs_landmarks.csv`` (one row per held-out landmark:
``LANDMARK_COLUMNS``) and ``pairs_distance.png`` (each held-out landmark's TRE change against its distance to the
nearest given pair). Prints, per pair count and radius, the given pairs' residuals, the held-out TRE near a pair
(within ``NEAR_MM``) and far from it, with paired Wilcoxon tests, and with ``--folds K`` the radius a K-fold
choice on the cases would make (the radius of least mean held-out change on the other folds) and what it gives
on each fold.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon
from tqdm import tqdm

from MetaRegistrationLib.data import Dataset
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.evaluation import LANDMARK_COLUMNS, PAIR_COLUMNS, LandmarkRow, evaluate_landmark_pairs, to_csv
from MetaRegistrationLib.files import check_output_folder, staged_outputs
from MetaRegistrationLib.models import load_model, training_domain
from MetaRegistrationLib.registration import SWEEP_FRAMES
from MetaRegistrationLib.settings import AdaptationSettings, replaced

from .arguments import adaptation_overrides, add_data_arguments, add_output_arguments, pair_counts

NEAR_MM = 20.0
"""A held-out landmark within this distance (TRUS, mm) of a given pair is "near" it (issue 11)."""

ADAPTATION_FIELDS = tuple(field.name for field in dataclasses.fields(AdaptationSettings))


def radii(text: str) -> list[float]:
    """``--radius 0,5,10``: non-negative radii in mm."""
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of radii in mm: {text!r}") from None
    if not values or any(not np.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"radii must be finite numbers >= 0, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--pairs", type=pair_counts, default=[1], help="pair counts, e.g. 1,2 (default: 1)")
    parser.add_argument("--frames", type=int, default=SWEEP_FRAMES, help="frames of the sweep (default: %(default)s)")
    parser.add_argument("--pairs-after", type=int, metavar="N",
                        help="give the pairs after frame N of the sweep, 0 to --frames (0: before it; default: after "
                             "the sweep)")
    parser.add_argument("--model", type=Path, help="model checkpoint (default: bundled)")
    parser.add_argument("--radius", type=radii, default=[],
                        help="local correction radii to compare, mm, e.g. 0,10,20 (0: the network alone; default: "
                             "the model's landmark_radius_mm)")
    parser.add_argument("--adapt", action="append", default=[], metavar="NAME=VALUE",
                        help=f"override the model's adaptation settings (repeatable); NAME one of "
                             f"{', '.join(ADAPTATION_FIELDS)}")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="also report a K-fold choice of the radius over the cases (K >= 2)")
    add_output_arguments(parser, "output folder (pairs.csv, pairs_landmarks.csv, pairs_distance.png)")


def run(args: argparse.Namespace) -> int:
    if args.frames < 2:
        raise InputError(f"--frames must be at least 2 (the first update needs 2), got {args.frames}")
    if args.folds == 1 or args.folds < 0:
        raise InputError(f"--folds must be 0 (none) or at least 2, got {args.folds}")
    given_after = args.frames if args.pairs_after is None else args.pairs_after
    if not 0 <= given_after <= args.frames:
        raise InputError(f"--pairs-after must be 0 to --frames ({args.frames}), got {given_after}")
    overrides = adaptation_overrides(args.adapt, ADAPTATION_FIELDS)
    check_output_folder(args.out, args.overwrite, protected=(args.data,))
    model = load_model(args.model)  # a bad model fails before any case is read, and is read once
    if overrides:
        model = model._replace(settings=replaced(model.settings, "--adapt", **overrides))
    dataset = Dataset(args.data, training_domain=training_domain(model.card))
    case_ids = dataset.select(args.split, args.cases)
    with tqdm(total=len(case_ids), desc="landmark pairs", unit="case", file=sys.stderr, leave=False) as bar:
        rows, landmarks = evaluate_landmark_pairs(
            dataset, case_ids, args.pairs, model, args.frames, args.radius,
            progress=lambda case_id: (bar.set_postfix(case=case_id), bar.update()), given_after=given_after)
    with staged_outputs(args.out) as staging:  # the three files appear together, or none
        (staging / "pairs.csv").write_text(to_csv(rows, PAIR_COLUMNS), encoding="utf-8")
        (staging / "pairs_landmarks.csv").write_text(to_csv(landmarks, LANDMARK_COLUMNS), encoding="utf-8")
        (staging / "pairs_distance.png").write_bytes(distance_figure(landmarks))
    when = "after the sweep" if given_after == args.frames else f"after frame {given_after}"
    print(f"{args.frames} frames, landmark pairs {when}, with a local correction of each radius (0: the network "
          f"alone); held-out landmarks near (<= {NEAR_MM:g} mm from a given pair) and far; paired Wilcoxon over "
          "landmark instances")
    print(f"{'pairs':>5} {'radius':>6} {'cases':>5} {'residual med/p90':>16} {'fold %':>6} {'near n':>6} "
          f"{'near TRE before/after':>21} {'p':>7} {'far n':>5} {'far change med':>14} {'p':>7}")
    radius_list = sorted({row.radius_mm for row in rows})
    for count in args.pairs:
        for radius in radius_list:
            selected = [row for row in rows if row.pairs == count and row.radius_mm == radius]
            if not selected:
                print(f"{count:>5} {radius:>6g} {0:>5}  (no case has a landmark left to hold out)")
                continue
            residuals = np.array([row.residual_mm for row in selected])
            folding = np.mean([row.fold_pct for row in selected])
            near, far = _split([l for l in landmarks if l.pairs == count and l.radius_mm == radius])
            print(f"{count:>5} {radius:>6g} {len(selected):>5} "
                  f"{np.median(residuals):>7.2f}/{np.percentile(residuals, 90):<8.2f} {folding:>6.2f} "
                  f"{len(near):>6} {_before_after(near):>21} {_p(near):>7} {len(far):>5} "
                  f"{_median_change(far):>14} {_p(far):>7}")
    if args.folds:
        print(fold_choice(landmarks, args.pairs[0], args.folds), end="")
    print(f"Wrote {args.out / 'pairs.csv'}, {args.out / 'pairs_landmarks.csv'} and {args.out / 'pairs_distance.png'}")
    return 0


def _split(landmarks: list[LandmarkRow]) -> tuple[list[LandmarkRow], list[LandmarkRow]]:
    return ([l for l in landmarks if l.distance_to_pair_mm <= NEAR_MM],
            [l for l in landmarks if l.distance_to_pair_mm > NEAR_MM])


def _changes(landmarks: list[LandmarkRow]) -> np.ndarray:
    return np.array([l.tre_pairs_mm - l.tre_frames_mm for l in landmarks])


def _before_after(landmarks: list[LandmarkRow]) -> str:
    if not landmarks:
        return "-"
    return (f"{np.median([l.tre_frames_mm for l in landmarks]):.2f}/"
            f"{np.median([l.tre_pairs_mm for l in landmarks]):.2f}")


def _median_change(landmarks: list[LandmarkRow]) -> str:
    return f"{np.median(_changes(landmarks)):+.2f}" if landmarks else "-"


def _p(landmarks: list[LandmarkRow]) -> str:
    changes = _changes(landmarks)
    if len(changes) < 2 or not np.any(changes):
        return "-"
    return f"{wilcoxon(changes).pvalue:.4f}"


def fold_choice(landmarks: list[LandmarkRow], pairs: int, folds: int) -> str:
    """The radius a K-fold choice makes (least mean held-out TRE change on the other folds' cases; cases split
    into K folds in their order) and the mean change it gives on each fold, as text lines."""
    selected = [l for l in landmarks if l.pairs == pairs]
    cases = sorted({l.case for l in selected}, key=[l.case for l in selected].index)
    if len(cases) < folds:
        return f"--folds {folds}: only {len(cases)} case(s)\n"
    radius_list = sorted({l.radius_mm for l in selected})
    out = io.StringIO()
    out.write(f"{folds}-fold choice of the radius ({pairs} pair(s); least mean held-out TRE change on the other "
              f"folds):\n")
    chosen_changes = []
    for fold in range(folds):
        held = set(cases[fold::folds])

        def mean_change(radius: float, inside: bool) -> float:
            return float(np.mean(_changes([l for l in selected
                                           if l.radius_mm == radius and (l.case in held) == inside])))

        choice = min(radius_list, key=lambda radius: mean_change(radius, inside=False))
        chosen_changes.append(mean_change(choice, inside=True))
        out.write(f"  fold {fold + 1}: {len(held)} cases, radius {choice:g} mm chosen on the others, mean "
                  f"held-out change on this fold {chosen_changes[-1]:+.3f} mm\n")
    overall = min(radius_list, key=lambda radius: float(np.mean(_changes([l for l in selected
                                                                          if l.radius_mm == radius]))))
    out.write(f"  on all cases the choice is {overall:g} mm; mean out-of-fold change {np.mean(chosen_changes):+.3f} "
              "mm\n")
    return out.getvalue()


def distance_figure(landmarks: list[LandmarkRow]) -> bytes:
    """PNG: each held-out landmark's TRE change (after - before the pairs, mm) against its distance to the
    nearest given pair (TRUS, mm), one colour per radius, with each radius's running median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for radius in sorted({l.radius_mm for l in landmarks}):
        chosen = sorted((l for l in landmarks if l.radius_mm == radius), key=lambda l: l.distance_to_pair_mm)
        distance = np.array([l.distance_to_pair_mm for l in chosen])
        change = _changes(chosen)
        points = axis.scatter(distance, change, s=9, alpha=0.45, label=f"radius {radius:g} mm")
        if len(chosen) >= 10:
            window = max(5, len(chosen) // 8)
            running = [np.median(change[max(0, n - window // 2): n + window // 2 + 1]) for n in range(len(chosen))]
            axis.plot(distance, running, color=points.get_facecolor()[0][:3], linewidth=2)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.axvline(NEAR_MM, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel("distance on the TRUS to the nearest given pair (mm)")
    axis.set_ylabel("held-out landmark error change (mm), after - before")
    axis.set_title("What a landmark pair does to the other landmarks (lines: running medians)", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
