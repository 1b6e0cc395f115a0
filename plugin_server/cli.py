"""The ``autoretouch`` command: retouch single photos, studio batches, install the GIMP plug-in.

Every AutoRetouchError is turned into one line on stderr and a non-zero exit code here, and
nowhere else: users see what went wrong and what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__, batch, checkpoint, client, engine, gimp_install, imageio
from .errors import AutoRetouchError, BadOptionError

EXIT_FAILURE = 1
EXIT_USAGE = 2


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that may run the model in this process."""
    parser.add_argument(
        "--checkpoint", metavar="PATH",
        help="model file to use (written by `autoretouch-train export`); default: the bundled starter model, when one is installed",
    )
    parser.add_argument(
        "--strength", type=float, default=1.0, metavar="S",
        help="how much of the retouch to apply: 0 = none, 1 = as trained (default), up to 2 = stronger",
    )
    parser.add_argument(
        "--tile-size", type=int, metavar="N",
        help="tile side in pixels (default: chosen from free memory; 0 = whole image at once)",
    )
    parser.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision", choices=sorted(engine.PRECISIONS),
        help="arithmetic precision (default: fp32 on CPU, bf16 on GPU)",
    )


def _register_retouch(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retouch", help="retouch one photo",
        description="Retouch one photo (PNG, JPEG or TIFF) and write the result. Bit depth, alpha, "
        "ICC profile and EXIF are kept; the output format follows OUT's extension.",
        epilog="example: autoretouch retouch portrait.jpg portrait-retouched.jpg --checkpoint model.pt",
    )
    parser.add_argument("input", metavar="IN", help="photo to retouch")
    parser.add_argument("output", metavar="OUT", help="where to write the result (.png, .jpg, .tif); never IN itself")
    parser.add_argument(
        "--server", metavar="URL",
        help=f"retouch on this AutoRetouch server (default: {client.DEFAULT_URL} when it answers and no "
        "--checkpoint is given, else in this process; the pixels are the same either way)",
    )
    parser.add_argument("--token", default=os.environ.get("AUTORETOUCH_TOKEN"),
                        help="bearer token for a server started with --token (default: $AUTORETOUCH_TOKEN)")
    add_engine_options(parser)
    parser.set_defaults(handler=_retouch_command)


def _retouch_command(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    if _same_file(src, dst):
        raise BadOptionError(f"{dst} is the input file; choose another output name so the original is kept")
    if not dst.parent.is_dir():
        raise BadOptionError(f"the output folder {dst.parent} does not exist")
    engine.check_strength(args.strength)
    picture = imageio.read(src)
    imageio.check_writable(imageio.format_for_path(dst), picture.pixels)
    progress = _progress_printer(src.name)
    servers = client.servers_to_use([args.server] if args.server else None, args.checkpoint, args.token)
    if servers:
        result = client.retouch_picture(picture, servers[0], args.strength, args.token, progress=progress)
    else:
        generator, _ = checkpoint.load(checkpoint.resolve(args.checkpoint))
        result = picture.with_pixels(engine.retouch(
            picture.pixels, generator, strength=args.strength, tile_size=args.tile_size,
            device=args.device, precision=args.precision, progress=progress,
        ))
    imageio.write(dst, result)
    return 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


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
    try:
        return args.handler(args)
    except BadOptionError as exc:
        print(f"autoretouch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AutoRetouchError as exc:
        print(f"autoretouch: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("autoretouch: interrupted; no output was written", file=sys.stderr)
        return 130
