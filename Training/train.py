"""``metareg-train``: meta-train the registration initialisation with Reptile (and train baselines).

Config-first: a YAML file (``Training/configs/*.yaml``, :mod:`.config`) is validated, then the data, and only then
is the run folder created (:mod:`.run_folder`: the resolved ``config.yaml``, ``git_commit.txt``, ``log.csv``,
``val.csv``, crash-safe checkpoints behind ``latest`` and the trained model ``final``). ``--resume`` continues a
stopped run (killed, interrupted with Ctrl-C, or out of disk space) from ``latest`` with its saved config;
episodes are seeded from (seed, episode), so a resumed run ends as an uninterrupted one would.

Modes (:mod:`.reptile`):
    ``meta``: Reptile (Nichol et al. 2018) as in the interactive meta-registration paper.
    ``conventional``: the same episodes, one Adam step each on a persistent optimiser: an ordinary (non-meta)
        network on the same input.

``bundle`` (:mod:`.bundling`) evaluates a run's checkpoint on the val split and writes it as a model with its card.
A user error is one line, ``metareg-train: error: ...``, with exit status 2; Ctrl-C exits with 130 and says how
to resume.

Devices and scale: ``--device cuda`` (or ``auto``) trains on a GPU; ``meta_batch`` in the config runs several
Reptile episodes per outer step in parallel; ``torchrun --nproc-per-node N -m Training.train meta ...`` shares each
batch between N ranks (:mod:`.distributed`; README, "Training at scale"). ``--time-limit`` checkpoints and stops
after a number of minutes, for a machine lent for a fixed time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from MetaRegistrationLib.devices import DEVICE_NAMES
from MetaRegistrationLib.errors import InputError, MetaRegistrationError, OneLineArgumentParser

from .bundling import bundle
from .config import MODES, load_config
from .run_folder import RunFolder
from .training_loop import train

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as a shell reports it."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="metareg-train", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mode in MODES:
        sub = commands.add_parser(mode, help=f"train in {mode} mode (the config's mode must match)")
        sub.add_argument("--config", type=Path, help="YAML config (with --resume: optional, must match the run's)")
        sub.add_argument("--run", "--run-folder", dest="run", type=Path, required=True,
                         help="run folder (under torchrun write --run-folder: torchrun takes --run for its --run-path)")
        sub.add_argument("--resume", action="store_true", help="continue the run in --run from its latest checkpoint")
        sub.add_argument("--device", default="auto",
                         help=f"where to train: {', '.join(DEVICE_NAMES)} or cuda:N (default: %(default)s, a GPU "
                              "when torch sees one)")
        sub.add_argument("--time-limit", type=_minutes, metavar="MINUTES",
                         help="checkpoint and stop after this many minutes (resume later with --resume)")
    segmenter = commands.add_parser("segmenter", help="train (or bundle) the 2D TRUS frame segmenter",
                                    description=_segmenter_doc())
    _segmenter_module().add_arguments(segmenter)
    sub = commands.add_parser("bundle", help="evaluate a run's checkpoint on val and write it as a model with its card")
    sub.add_argument("--run", type=Path, required=True, help="run folder")
    sub.add_argument("--checkpoint", default="latest", help="checkpoint name in the run folder (default: latest)")
    sub.add_argument("--out", type=Path, required=True,
                     help="output model stem, e.g. MetaRegistrationLib/bundled_models/meta-init")
    sub.add_argument("--version", default="1.0.0", help="the model's version on its card (default: 1.0.0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "segmenter":
        try:
            return _segmenter_module().run(args)
        except MetaRegistrationError as error:
            print(f"metareg-train: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"metareg-train segmenter: interrupted; continue with --resume --run {args.run}", file=sys.stderr)
            return INTERRUPTED
    if args.command == "bundle":
        try:
            metrics = bundle(args.run, args.checkpoint, args.out, args.version)
        except MetaRegistrationError as error:
            print(f"metareg-train: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("metareg-train bundle: interrupted; nothing was written", file=sys.stderr)
            return 130
        print(f"wrote {args.out}.safetensors and {args.out}.json; val: {json.dumps(metrics)}")
        return 0
    run = RunFolder(args.run, args.command)
    try:
        if args.resume:
            config = run.config_to_resume(args.config)
        elif args.config is None:
            raise InputError("--config is needed to start a run")
        else:
            config = load_config(args.config)
        if config.mode != args.command:
            raise InputError(f"{args.config or run.config_path}: mode is {config.mode!r}, not {args.command!r}")
        final = train(config, run, resume=args.resume, device=args.device,
                      time_limit_s=None if args.time_limit is None else args.time_limit * 60)
    except MetaRegistrationError as error:
        print(f"metareg-train: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.resume or run.created:
            print(f"metareg-train: interrupted; resume with: {run.resume_command()}", file=sys.stderr)
        else:
            print("metareg-train: interrupted before the run started; nothing was written", file=sys.stderr)
        return INTERRUPTED
    if final is not None and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 says it
        print(f"trained model: {final}.safetensors + {final}.json")
    return 0


def _segmenter_module():
    from . import segmenter

    return segmenter


def _segmenter_doc() -> str:
    return "train the 2D TRUS frame segmenter on planes of the training split (Training/segmenter.py)"


def _minutes(text: str) -> float:
    """A ``--time-limit``: a positive number of minutes."""
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of minutes: {text!r}") from None
    if not minutes > 0 or minutes == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text!r}")
    return minutes


if __name__ == "__main__":
    sys.exit(main())
