"""``metareg-app [--data DIR --case ID] [--port N] [--model PATH] [--method NAME]``: serve the web app on 127.0.0.1.

With no ``--data`` it opens the synthetic phantom case. trame-slicer is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import socket
import sys

from MetaRegistrationLib.errors import InputError, MetaRegistrationError, OneLineArgumentParser

DEFAULT_PORT = 8080


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="metareg-app", description="The interactive sweep in a web browser "
                                     "(trame-slicer), on the Slicer module's Logic.")
    parser.add_argument("--data", help="data folder in the layout of mrus-prostate (default: the synthetic phantom)")
    parser.add_argument("--case", help="case ID in --data (default: its first case)")
    parser.add_argument("--model", help="model stem (NAME of NAME.safetensors + NAME.json; default: bundled)")
    parser.add_argument("--method", default="meta", help="sweep method of the registry that registers the case "
                        "(default: %(default)s; e.g. meta-noadapt)")
    parser.add_argument("--frame-glands", choices=("true", "predicted"), default="true",
                        help="the simulated frames' glands: the case's TRUS label, or predicted by the bundled frame "
                             "segmenter (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    return parser


def check_port_free(port: int) -> None:
    """Refuse a port another program listens on (one line, not the server's traceback)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise InputError(f"--port {port}: 127.0.0.1:{port} cannot be used ({error.strerror or error}); "
                             "choose another port") from None


def run(args: argparse.Namespace) -> int:
    if args.case and not args.data:
        raise InputError("--case needs --data (the folder the case is in)")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port must be between 1 and 65535, got {args.port}")
    from MetaRegistrationLib.models import load_model
    from MetaRegistrationLib.phantom import open_case
    from MetaRegistrationLib.registration import get_method

    method = get_method(args.method)
    if not method.sweep:
        raise InputError(f"--method {args.method}: registers whole volumes; the app needs a sweep method")
    check_port_free(args.port)
    # What the page would otherwise report after the server started: refused here, in one line, with exit 2.
    open_case(args.data, args.case)
    if method.uses_model:
        load_model(args.model)
    try:
        from . import app
    except ImportError as error:
        raise InputError(f"the web app needs trame-slicer ({error}); install it with: pip install "
                         "'slicer-meta-registration[app]'") from None
    return app.main(args.data, args.case, args.model, args.port, args.method, args.frame_glands)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except MetaRegistrationError as error:
        print(f"metareg-app: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
