"""``metareg pairs``: what clinician landmark pairs buy after a sweep (the annotation scenario).

After a sweep of ``--frames`` frames, landmark pairs (the centroids of each case's landmark labels 1, 2, ...)
are added one at a time as interactions; TRE is measured on the landmarks not given. Writes ``pairs.csv``
(columns ``MetaRegistrationLib.evaluation.PAIR_COLUMNS``) in ``--out`` and prints, per pair count, the median
held-out TRE before and after the pairs with a paired Wilcoxon test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon
from tqdm import tqdm

from MetaRegistrationLib.data import Dataset
from MetaRegistrationLib.errors import InputError
from MetaRegistrationLib.evaluation import PAIR_COLUMNS, evaluate_landmark_pairs, to_csv
from MetaRegistrationLib.files import check_output_folder, write_text_atomic
from MetaRegistrationLib.models import load_model, training_domain
from MetaRegistrationLib.registration import SWEEP_FRAMES

from .arguments import add_data_arguments, add_output_arguments, pair_counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--pairs", type=pair_counts, default=[1], help="pair counts, e.g. 1,2 (default: 1)")
    parser.add_argument("--frames", type=int, default=SWEEP_FRAMES, help="frames of the sweep (default: %(default)s)")
    parser.add_argument("--model", type=Path, help="model checkpoint (default: bundled)")
    add_output_arguments(parser, "output folder (pairs.csv)")


def run(args: argparse.Namespace) -> int:
    if args.frames < 2:
        raise InputError(f"--frames must be at least 2 (the first update needs 2), got {args.frames}")
    check_output_folder(args.out, args.overwrite, protected=(args.data,))
    model = load_model(args.model)  # a bad model fails before any case is read, and is read once
    dataset = Dataset(args.data, training_domain=training_domain(model.card))
    case_ids = dataset.select(args.split, args.cases)
    with tqdm(total=len(case_ids), desc="landmark pairs", unit="case", file=sys.stderr, leave=False) as bar:
        rows = evaluate_landmark_pairs(dataset, case_ids, args.pairs, model, args.frames,
                                       progress=lambda case_id: (bar.set_postfix(case=case_id), bar.update()))
    write_text_atomic(args.out / "pairs.csv", to_csv(rows, PAIR_COLUMNS))
    print(f"Held-out landmark TRE after {args.frames} frames, without and with pairs (Wilcoxon signed-rank):")
    print(f"{'pairs':>5} {'cases':>5} {'median TRE frames mm':>21} {'median TRE +pairs mm':>21} {'p':>8}")
    for count in args.pairs:
        selected = [row for row in rows if row.pairs == count]
        if not selected:
            print(f"{count:>5} {0:>5}  (no case has a landmark left to hold out)")
            continue
        before = np.array([row.tre_frames_mm for row in selected])
        after = np.array([row.tre_pairs_mm for row in selected])
        p = wilcoxon(before, after).pvalue if len(selected) > 1 and np.any(before != after) else float("nan")
        print(f"{count:>5} {len(selected):>5} {np.median(before):>21.2f} {np.median(after):>21.2f} {p:>8.4f}")
    print(f"Wrote {args.out / 'pairs.csv'}")
    return 0
