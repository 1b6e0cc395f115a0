"""What the three command lines share: the engine options and the one error edge.

    parser.add_argument(...); add_engine_options(parser)
    return run("autoretouch", lambda: handler(args))    # AutoRetouchError -> one line + exit code

``run`` is the only place an AutoRetouchError becomes text on a terminal: ``autoretouch``,
``autoretouch-server`` and ``autoretouch-train`` exit with the error's ``exit_code`` (2 for
an impossible request, 1 for failed work, 130 when interrupted), never with a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from .errors import AutoRetouchError
from .wire import DEFAULT_MIN_IOD, PRECISIONS, TOKEN_ENV, RetouchOptions

EXIT_INTERRUPTED = 130


def add_engine_options(parser: argparse._ActionsContainer, strength: bool = True,
                       device_help: str = "auto (default: CUDA if present), cpu, cuda or cuda:N") -> None:
    """Options of every command that may run the engine; a server takes all but strength."""
    if strength:
        parser.add_argument(
            "--strength", type=float, default=1.0, metavar="S",
            help="how much of the retouch to apply: 0 = none, 1 = as trained (default), up to 2 = stronger",
        )
    if strength:
        parser.add_argument("--no-faces", dest="faces", action="store_false",
                            help="retouch the whole image as it is, not face by face at the model's scale "
                                 "(for models trained on other material)")
        parser.add_argument("--min-iod", type=float, default=DEFAULT_MIN_IOD, metavar="PX",
                            help="leave faces alone whose eye centres are fewer than PX pixels apart (default: %(default)g)")
    parser.add_argument("--tile-size", type=int, metavar="PX",
                        help="tile side in pixels; smaller tiles use less memory (default: from free memory; 0 = whole image at once)")
    parser.add_argument("--device", default="auto", help=device_help)
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="arithmetic precision (default: fp32 on CPU, bf16 on GPU where the model allows it)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Where the model and the server come from, for ``retouch`` and ``batch``."""
    parser.add_argument(
        "--checkpoint", metavar="PATH",
        help="model file to use in this process (written by `autoretouch-train export`); default: the bundled starter model",
    )
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"bearer token of a server started with one (default: ${TOKEN_ENV})")
    add_engine_options(parser)


def options_from_args(args: argparse.Namespace, device: str | None = None) -> RetouchOptions:
    """The engine options of parsed arguments, validated once (BadOptionError names the problem)."""
    return RetouchOptions(
        strength=getattr(args, "strength", 1.0), faces=getattr(args, "faces", True),
        min_iod=getattr(args, "min_iod", DEFAULT_MIN_IOD), tile_size=args.tile_size,
        device=args.device if device is None else device, precision=args.precision,
    )


def run(prog: str, call: Callable[[], int]) -> int:
    """Run a command's work; typed errors and Ctrl+C become one line and the exit code."""
    try:
        return call()
    except AutoRetouchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
