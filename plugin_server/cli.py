"""The ``autoretouch`` command: retouch single photos, studio batches, install the GIMP plug-in.

Every AutoRetouchError becomes one line on stderr and its exit code in ``command.run``, once:
users see what went wrong and what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__, batch, gimp_install, imageio, outputs, retouchers, wire
from .command import add_model_options, options_from_args, run


def _register_retouch(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retouch", help="retouch one photo",
        description="Retouch one photo (PNG, JPEG or TIFF) and write the result. Every face is found and "
        "only its skin is retouched, at the model's scale; a photo with no face is written unchanged. "
        "Bit depth, alpha, ICC profile, EXIF and print resolution are kept; the output format follows "
        "OUT's extension. The work runs on "
        f"the server at {wire.DEFAULT_URL} when it answers, else in this process (the pixels are the same); "
        "--checkpoint, --tile-size, --device and --precision run it in this process.",
        epilog="example: autoretouch retouch portrait.jpg portrait-retouched.jpg --strength 0.8",
    )
    parser.add_argument("input", metavar="IN", help="photo to retouch")
    parser.add_argument("output", metavar="OUT", help="where to write the result (.png, .jpg, .tif); never IN itself")
    parser.add_argument("--server", metavar="URL", help="retouch on this AutoRetouch server (it uses its own model and settings)")
    add_model_options(parser)
    parser.set_defaults(handler=_retouch_command)


def _retouch_command(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    options = options_from_args(args)
    outputs.prepare_folder(dst, protected=[src], create=False)
    picture = imageio.read(src)
    imageio.check_writable(imageio.format_for_path(dst), picture.pixels, picture.alpha, picture.exif)
    plan = retouchers.choose([args.server] if args.server else None, args.checkpoint, options, args.token)
    outcome = plan.retouchers[0](picture, _progress_printer(src.name))
    imageio.write(dst, outcome.picture)
    if outcome.faces == 0:
        print(f"{src.name}: no face found: the photo was written unchanged", file=sys.stderr)
    return 0
def _progress_printer(label: str) -> Callable[[float], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(fraction: float) -> None:
        filled = int(30 * fraction)
        end = "\n" if fraction >= 1.0 else ""
        print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%}", end=end, file=sys.stderr, flush=True)

    return show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoretouch",
        description="Automatic professional face retouching: removes spots, blemishes and redness "
        "while keeping skin texture. Runs on CPU or GPU, on photos of any size.",
    )
    parser.add_argument("--version", action="version", version=f"autoretouch {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _register_retouch(subparsers)
    batch.register(subparsers)
    gimp_install.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run("autoretouch", lambda: args.handler(args))
