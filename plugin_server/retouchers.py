"""Where a command's retouching runs: on servers, or in this process. Used by ``retouch`` and ``batch``.

    plan = choose(servers=None, checkpoint=None, options=RetouchOptions(), token=None)
    outcome = plan.retouchers[0](picture, progress)    # Outcome(picture, faces): ICC, EXIF, DPI kept

Rules, so no option is ever silently dropped: servers named explicitly are used, and then a
model file or in-process settings (tile size, device, precision) are refused, since a server
uses its own; with none named, the default server is used when it answers and nothing
in-process was asked for, else the work runs here. The pixels are the same either way.
"""

from __future__ import annotations

import threading
from typing import Callable, NamedTuple, Protocol

from . import wire
from .client import Client
from .errors import BadOptionError, ServerError
from .imageio import Picture
from .server import protocol

Progress = Callable[[float], None]


class Outcome(NamedTuple):
    picture: Picture
    faces: int | None  # faces retouched (0: the picture is unchanged); None: face finding off


class Retoucher(Protocol):
    def __call__(self, picture: Picture, progress: Progress | None = None) -> Outcome: ...


class Plan(NamedTuple):
    retouchers: list[Retoucher]  # one per server, or the one in this process
    where: str  # for the user: the servers' addresses, or "this process"
    remote: bool


def choose(servers: list[str] | None, checkpoint: str | None, options: wire.RetouchOptions,
           token: str | None) -> Plan:
    """The retouchers to use and where the work runs."""
    local = options.local_settings() + (["model file"] if checkpoint else [])
    if servers:
        if local:
            raise BadOptionError(
                f"the {' and '.join(local)} {'applies' if len(local) == 1 else 'apply'} only when retouching "
                "in this process; a server uses the "
                "model and settings it was started with: give them to the server, or retouch without one"
            )
        return Plan([remote(Client(url, token), options) for url in servers], ", ".join(servers), True)
    if not local:
        default = Client(wire.DEFAULT_URL, token)
        if default.available():
            return Plan([remote(default, options)], default.url, True)
    return Plan([in_process(checkpoint, options)], "this process", False)


def remote(client: Client, options: wire.RetouchOptions) -> Retoucher:
    """Pixels travel as the msgpack message; ICC profile, EXIF and format stay here."""

    def retouch(picture: Picture, progress: Progress | None = None) -> Outcome:
        body = protocol.message_for(picture.pixels)
        if progress is None:
            reply = client.retouch(body, wire.MSGPACK_TYPE, options)
        else:
            reply = client.run_job(body, wire.MSGPACK_TYPE, options, on_progress=progress)
        height, width = picture.pixels.shape[:2]
        pixels = protocol.pixels_from(wire.decode_message(reply.body, max_pixels=width * height))
        if pixels.shape != picture.pixels.shape or pixels.dtype != picture.pixels.dtype:
            raise ServerError(f"the server at {client.url} answered pixels of shape {pixels.shape} {pixels.dtype}, "
                              f"not {picture.pixels.shape} {picture.pixels.dtype}")
        return Outcome(picture.with_pixels(pixels), reply.faces)

    return retouch


def in_process(checkpoint_path: str | None, options: wire.RetouchOptions) -> Retoucher:
    """One model load for all photos; one inference at a time, while others decode and encode."""
    from . import checkpoint, face_retouch  # torch only when the work runs here

    model = checkpoint.load(checkpoint.resolve(checkpoint_path))
    lock = threading.Lock()

    def retouch(picture: Picture, progress: Progress | None = None) -> Outcome:
        with lock:
            result = face_retouch.retouch(picture.pixels, model, options, progress)
        return Outcome(picture.with_pixels(result.pixels), result.faces)

    return retouch

