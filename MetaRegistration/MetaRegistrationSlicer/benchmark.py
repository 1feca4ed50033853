"""``python -m MetaRegistrationSlicer.benchmark``: what the Slicer Logic adds to an interaction, headless.

The same right-to-left sweep of one case (10 frames) runs through the library's ``AdaptationSession`` (frames as
arrays, no scene) and through ``MetaRegistrationCoreLogic.addFrame`` on a ``slicer-core`` scene (frames as
tracked volume and segmentation nodes, results written to the output transform and segmentation nodes), the two
alternating so that both see the same machine load. The table gives per-interaction medians: the library's
interaction, the Logic's, their difference (the Logic's overhead; the budget is 0.05 s) and its parts: reading
the frame's nodes, and computing and writing the outputs.

This is ``metareg benchmark``'s ``--logic`` part. It lives here, not in ``Training``, because the training package
may not import a front end (README, "Layout").
"""

from __future__ import annotations

import json
from statistics import median
import sys
import time

LOGIC_OVERHEAD_BUDGET_S = 0.05
"""What the Logic may add to the library's interaction (issue 10)."""


def time_interactions(case, model, sweeps: int, precision: str) -> dict[str, list[float]]:
    """Per-interaction seconds of the library and the Logic over ``sweeps`` timed sweeps (after one warm-up)."""
    from MetaRegistrationLib.registration import SWEEP_FRAMES, sweep_frames, sweep_session

    from . import conversions
    from .logic import MetaRegistrationCoreLogic

    frames = sweep_frames(case, SWEEP_FRAMES)
    scene, logics = conversions.headlessScene()  # noqa: F841 - the logics live as long as the scene
    nodes = conversions.caseNodes(scene, case)
    frameNodes = [conversions.frameNodesFromFrame(scene, frame, f"frame {n}") for n, frame in enumerate(frames, 1)]
    times: dict[str, list[float]] = {key: [] for key in ("library", "logic", "read", "outputs")}
    for sweep in range(1 + sweeps):
        session = sweep_session(case, model, precision=precision)
        logic = MetaRegistrationCoreLogic(scene)
        logic.startSession(nodes["MR"], nodes["MR segmentation"], nodes["TRUS"], modelPath=model,
                           precision=precision)
        session.add_frames(frames[:1])
        logic.addFrame(*frameNodes[0])
        for frame, (volume, segmentation) in zip(frames[1:], frameNodes[1:]):
            start = time.perf_counter()
            session.add_frames([frame])
            library = time.perf_counter() - start
            start = time.perf_counter()
            pending = logic.prepareFrame(volume, segmentation)
            read = time.perf_counter() - start
            report = logic.runInteraction(pending)
            total = time.perf_counter() - start
            if sweep > 0:
                for key, value in (("library", library), ("logic", total), ("read", read),
                                   ("outputs", report.outputSeconds)):
                    times[key].append(value)
    return times


def main(argv: list[str] | None = None) -> int:
    from MetaRegistrationLib.errors import MetaRegistrationError, OneLineArgumentParser

    parser = OneLineArgumentParser(prog="python -m MetaRegistrationSlicer.benchmark",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data set folder (default: the synthetic phantom)")
    parser.add_argument("--case", metavar="ID", help="case of --data (default: its first case)")
    parser.add_argument("--model", help="model stem (default: the bundled model)")
    parser.add_argument("--sweeps", type=int, default=3, metavar="N", help="timed sweeps after one warm-up (3)")
    parser.add_argument("--precision", default="auto", help="the network's arithmetic (default: auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        import torch

        from MetaRegistrationLib.errors import InputError
        from MetaRegistrationLib.phantom import open_case

        if args.sweeps < 1:
            raise InputError(f"--sweeps must be at least 1, got {args.sweeps}")
        case = open_case(args.data, args.case)
        times = time_interactions(case, args.model, args.sweeps, args.precision)
    except MetaRegistrationError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    overhead = [logic - library for logic, library in zip(times["logic"], times["library"])]
    result = {"case": case.case_id, "threads": torch.get_num_threads(), "sweeps": args.sweeps,
              "interactions": len(overhead), "library_interaction_median_s": median(times["library"]),
              "logic_interaction_median_s": median(times["logic"]), "logic_overhead_median_s": median(overhead),
              "read_frame_median_s": median(times["read"]), "outputs_median_s": median(times["outputs"]),
              "logic_overhead_budget_s": LOGIC_OVERHEAD_BUDGET_S}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"case {case.case_id}, {args.sweeps} sweep(s) of {len(overhead) // args.sweeps + 1} frames after one "
          f"warm-up, torch with {result['threads']} threads; medians per interaction (s)")
    for key in ("library_interaction_median_s", "logic_interaction_median_s", "logic_overhead_median_s",
                "read_frame_median_s", "outputs_median_s"):
        print(f"{key.removesuffix('_median_s'):<24}{result[key]:>8.3f}")
    print(f"{'overhead budget':<24}{LOGIC_OVERHEAD_BUDGET_S:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
