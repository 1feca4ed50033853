"""The ``metareg`` command: demo, batch evaluation, benchmark, paired comparison and the web app.

A user error (bad file, bad argument value, mismatched checkpoint) is printed as
one line and exits with status 2; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import sys

from MetaRegistrationLib import __version__
from MetaRegistrationLib.errors import MetaRegistrationError

from MetaRegistrationWeb import command as app_command

from . import benchmark, compare, demo, evaluate, pairs

SUBCOMMANDS = {
    "demo": (demo, "register one case (the built-in phantom by default) and draw a figure"),
    "evaluate": (evaluate, "batch evaluation: TRE, DSC and folding per case, summary, report and box plots"),
    "benchmark": (benchmark, "time adaptation updates and predictions"),
    "compare": (compare, "paired Wilcoxon test of two evaluations' per-case TRE and DSC"),
    "pairs": (pairs, "what clinician landmark pairs buy after a sweep: TRE on held-out landmarks"),
    "app": (app_command, "the interactive sweep in a web browser (trame-slicer), on the Slicer module's Logic"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metareg", description="Interactive meta-learned MR-to-TRUS registration.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
