"""``autoretouch-server``: load the model once and serve the retouch API on loopback.

    autoretouch-server --checkpoint generator.pt                 # http://127.0.0.1:8377
    autoretouch-server --checkpoint g.pt --device cuda:0,cuda:1  # one worker per GPU
    AUTORETOUCH_TOKEN=secret autoretouch-server --checkpoint g.pt --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from aiohttp import web

from .. import checkpoint, engine
from ..command import add_engine_options, options_from_args, run
from ..devices import resolve_device
from ..errors import BadConfigError
from ..model import Model
from ..wire import DEFAULT_HOST, DEFAULT_MAX_PIXELS, DEFAULT_PORT, TOKEN_ENV
from .jobs import models_for
from .security import is_loopback_bind, validate_token
from .settings import JobLimits, ServerSettings

log = logging.getLogger("autoretouch.server")


def build_parser() -> argparse.ArgumentParser:
    limits = JobLimits()
    parser = argparse.ArgumentParser(
        prog="autoretouch-server",
        description="Serve automatic face retouching to editor plug-ins over HTTP on this machine. "
                    "The API is described in docs/api.md and at GET /v1/openapi.json.",
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", default=DEFAULT_HOST,
                     help="address to bind; anything but loopback needs --token (default: %(default)s)")
    net.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    net.add_argument("--token",
                     help=f"require 'Authorization: Bearer TOKEN' on every request (default: ${TOKEN_ENV}; "
                          "prefer the variable, command lines are visible to other users)")
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", metavar="PATH",
                       help="generator checkpoint to serve, written by `autoretouch-train export` (default: the bundled starter model, when one is installed)")
    add_engine_options(model, strength=False, device_help="auto, cpu, cuda or a comma list such as "
                       "cuda:0,cuda:1, one worker each (default: auto: the first GPU, else the CPU)")
    work = parser.add_argument_group("limits")
    work.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help="largest image accepted, in pixels (413 above; also bounds the body size; default: %(default)s)")
    work.add_argument("--queue-size", type=int, default=limits.queue_size,
                      help="jobs waiting before requests get 503 with Retry-After (default: %(default)s)")
    work.add_argument("--result-ttl", type=float, default=limits.result_ttl, metavar="SECONDS",
                      help="how long a finished job's result is kept (default: %(default)s)")
    work.add_argument("--result-memory-mb", type=float, default=limits.result_memory / 2**20, metavar="MB",
                      help="memory for kept results; the oldest are dropped first (default: %(default)s)")
    work.add_argument("--body-timeout", type=float, default=ServerSettings.stall_seconds, metavar="SECONDS",
                      help="give up a request whose body stops arriving for this long (default: %(default)s)")
    work.add_argument("--idle-timeout", type=float, default=limits.idle_timeout, metavar="SECONDS",
                      help="cancel a job nobody has polled for this long, as its editor may have died (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The settings, or a BadConfigError saying what is wrong, before anything starts."""
    token = validate_token(args.token or os.environ.get(TOKEN_ENV) or None)
    if not is_loopback_bind(args.host) and not token:
        raise BadConfigError(
            f"refusing to listen on {args.host}: anyone who can reach it could use this server. "
            f"Set a token with --token or ${TOKEN_ENV}, or bind 127.0.0.1"
        )
    limits = JobLimits(
        queue_size=args.queue_size, result_ttl=args.result_ttl,
        result_memory=int(args.result_memory_mb * 2**20), idle_timeout=args.idle_timeout,
    )
    devices = [d.strip() for d in args.device.split(",") if d.strip()]
    resolved = tuple(str(resolve_device(d)) for d in devices or ["auto"])
    if len(set(resolved)) != len(resolved):
        raise BadConfigError(f"--device lists a device twice: {args.device}")
    return ServerSettings(
        host=args.host, port=args.port, devices=resolved, engine=options_from_args(args, device="auto"),
        max_pixels=args.max_pixels, token=token, limits=limits, stall_seconds=args.body_timeout,
    )


def model_info(path: str, model: Model, settings: ServerSettings) -> dict[str, Any]:
    """What /v1/health says of the model; refuses a precision the model is not accurate in."""
    generator = model.generator
    precisions = {engine.precision_for(model, resolve_device(d), settings.engine.precision) for d in settings.devices}
    return {
        "precision": ",".join(sorted(precisions)),
        "model": {
            "name": os.path.basename(path),
            "config": generator.config.to_dict(),
            "parameters": sum(p.numel() for p in generator.parameters()),
            "receptive_radius": generator.receptive_radius,
            "stride": generator.stride,
            "precisions": list(generator.precisions),
            "residual_floor": model.residual_floor,
            "scale": model.scale if model.scale is not None else checkpoint.NATIVE,
            "trained_on": model.metadata.get("trained_on"),
            "date": model.metadata.get("date"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run("autoretouch-server", lambda: serve(args))


def serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    path = checkpoint.resolve(args.checkpoint)
    model = checkpoint.load(path)
    info = model_info(str(path), model, settings)
    from .app import init_app  # aiohttp app construction only once the arguments are good

    app = init_app(settings, models_for(model, list(settings.devices)), info)
    where = f"http://{'[' + settings.host + ']' if ':' in settings.host else settings.host}:{settings.port}"
    log.info("serving %s on %s (%s)", path, where, ", ".join(settings.devices))
    # aiohttp closes a connection idle for 75 s (its keepalive_timeout); bodies stall out in read_body.
    web.run_app(app, host=settings.host, port=settings.port, handler_cancellation=True,
                print=lambda *_: print(f"AutoRetouch server ready on {where} (Ctrl+C to stop)", flush=True),
                access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
