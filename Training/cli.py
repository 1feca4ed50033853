"""The ``metareg`` command: demo, batch evaluation, benchmark, paired comparison, landmark pairs and quality
signals.

Each subcommand is a module of this package with ``add_arguments(parser)`` and ``run(args)``; only the chosen one
is imported, so ``metareg --help`` answers without loading torch or MONAI. The web app is a front end of its own
(``metareg-app``, in ``MetaRegistrationWeb``).

A user error (bad file, bad argument value, mismatched checkpoint) is printed as
one line and exits with status 2; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from MetaRegistrationLib import __version__
from MetaRegistrationLib.errors import MetaRegistrationError, OneLineArgumentParser

SUBCOMMANDS = {
    "demo": "register one case (the built-in phantom by default) and draw a figure",
    "evaluate": "batch evaluation: TRE, DSC and folding per case, summary, report and box plots",
    "benchmark": "time adaptation updates and predictions",
    "compare": "paired Wilcoxon test of two evaluations' per-case TRE and DSC",
    "pairs": "what clinician landmark pairs buy after a sweep: TRE on held-out landmarks",
    "quality": "per-update quality signals against the true TRE, and the result's dependence on the frames' order",
    "live": "register a live OpenIGTLink stream (PLUS) outside Slicer: --igtl HOST:PORT",
    "segment": "the frame segmenter on a split: Dice on a sweep's planes and by distance from the gland's edge, time",
}
"""Subcommand -> its help line; the module ``Training.<name>`` implements it."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` (if any) gets its module's arguments."""
    parser = OneLineArgumentParser(prog="metareg", description="Interactive meta-learned MR-to-TRUS registration.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((word for word in argv if not word.startswith("-")), None)
    for name, help_text in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"{__package__}.{name}")
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.run(args)
    except MetaRegistrationError as error:
        print(f"metareg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metareg {args.command}: interrupted, nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
