"""``metareg segment``: the frame segmenter (:mod:`MetaRegistrationLib.frame_segmenter`) measured on a split.

Prints three tables (nothing is written): the mean Dice on the planes a 10-frame sweep acquires (the frames the
registration gets, the issue's target); the Dice on every sagittal plane through the gland by its distance from
the gland's nearest edge along the sweep (planes at the edge hold slivers of gland, where a 2D segmenter fails
first); and the time to segment one frame on this machine. ``metareg evaluate --frame-glands predicted`` gives the
registration with predicted glands.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from MetaRegistrationLib.data import Dataset
from MetaRegistrationLib.frame_segmenter import load_frame_segmenter
from MetaRegistrationLib.metrics import dice
from MetaRegistrationLib.sweep import SAGITTAL_AXIS, gland_extent, sweep_positions

from .arguments import add_data_arguments

EDGE_BINS_MM = (0.0, 3.0, 6.0, 12.0, float("inf"))
"""Distance of a plane from the gland's nearest edge along the sweep (mm): the bins of the second table."""
SWEEP_FRAMES = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--model", type=Path, help="frame segmenter checkpoint stem (default: the bundled one)")


def run(args: argparse.Namespace) -> int:
    segmenter = load_frame_segmenter(args.model)
    dataset = Dataset(args.data)
    case_ids = dataset.select(args.split, args.cases)
    sweep_dice, by_edge, seconds = [], [], []
    for case_id in tqdm(case_ids, desc="segment", unit="case", file=sys.stderr, leave=False):
        case = dataset.load(case_id)
        image, gland = case.fixed_image.array[0], case.fixed_labels.array[0] > 0.5
        spacing = case.fixed_image.grid.spacing
        sweep = set(sweep_positions(gland, SWEEP_FRAMES))
        low, high = gland_extent(gland)
        for j in range(low, high + 1):
            plane = np.take(image, j, axis=SAGITTAL_AXIS)
            truth = np.take(gland, j, axis=SAGITTAL_AXIS).astype(np.float32)
            start = time.perf_counter()
            predicted = segmenter.segment(plane, (spacing[0], spacing[2]))
            seconds.append(time.perf_counter() - start)
            score = dice(predicted, truth)
            edge_mm = (min(j - low, high - j) + 0.5) * spacing[1]
            by_edge.append((edge_mm, score))
            if j in sweep:
                sweep_dice.append(score)
    print(f"frame segmenter on {len(case_ids)} cases ({args.split or 'selected cases'}), torch threads "
          f"{torch.get_num_threads()}")
    print("planes,n,mean_dice,sd_dice,median_dice")
    print(f"10-frame sweep,{len(sweep_dice)},{np.mean(sweep_dice):.3f},{np.std(sweep_dice, ddof=1):.3f},"
          f"{np.median(sweep_dice):.3f}")
    print("distance_from_edge_mm,n,mean_dice,share_below_0.5")
    for low_mm, high_mm in zip(EDGE_BINS_MM[:-1], EDGE_BINS_MM[1:]):
        scores = [score for edge, score in by_edge if low_mm <= edge < high_mm]
        if scores:
            print(f"{low_mm:g}-{high_mm:g},{len(scores)},{np.mean(scores):.3f},{np.mean(np.array(scores) < 0.5):.2f}")
    print(f"seconds_per_frame,median {np.median(seconds) * 1000:.1f} ms,p95 {np.percentile(seconds, 95) * 1000:.1f} ms")
    return 0
