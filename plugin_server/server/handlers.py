"""The HTTP handlers: the only server code that reads requests and builds responses.

Every handler raises typed errors (``plugin_server.errors`` and the server's own); the
middleware in ``app`` turns them into the JSON error body, once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

import numpy as np
from aiohttp import web

from .. import __version__, imageio
from ..errors import BadImageError, UnsupportedFormatError
from . import protocol
from .jobs import JobNotReadyError, Scheduler
from .openapi import openapi_document
from .settings import ServerSettings

SETTINGS = web.AppKey("settings", ServerSettings)
SCHEDULER = web.AppKey("scheduler", Scheduler)
MODEL_INFO = web.AppKey("model_info", dict)


@dataclass(frozen=True)
class Work:
    """A decoded request, ready for the scheduler."""

    pixels: np.ndarray
    strength: float
    render: Callable[[np.ndarray], bytes]
    media_type: str


async def health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    devices = list(settings.devices)
    return web.json_response({
        "status": "ok",
        "version": __version__,
        "device": ",".join(devices),
        "devices": devices,
        "precision": request.app[MODEL_INFO]["precision"],
        "tile_size": settings.tile_size,
        "model": request.app[MODEL_INFO]["model"],
        "max_pixels": settings.max_pixels,
        "queue": request.app[SCHEDULER].stats(),
    })


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(__version__, request.app[SETTINGS].max_pixels))


async def retouch(request: web.Request) -> web.Response:
    """Synchronous retouch; if the client goes away, the job is cancelled (handler cancellation)."""
    scheduler = request.app[SCHEDULER]
    work = await read_work(request)
    job = scheduler.submit(work.pixels, work.strength, work.render, work.media_type, watched=True)
    del work  # the job holds the pixels now; drop them as soon as the engine is done
    try:
        await asyncio.shield(job.done)
    except asyncio.CancelledError:
        scheduler.cancel(job, "the client disconnected")
        raise
    finally:
        result = job.result
        scheduler.forget(job)
    if job.state != "done":
        raise job.error
    return web.Response(body=result, content_type=job.media_type)


async def create_job(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    work = await read_work(request)
    job = scheduler.submit(work.pixels, work.strength, work.render, work.media_type, watched=False)
    return web.json_response(job.status(), status=202, headers={"Location": f"/v1/jobs/{job.id}"})


async def job_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SCHEDULER].get(request.match_info["id"]).status())


async def job_result(request: web.Request) -> web.Response:
    job = request.app[SCHEDULER].get(request.match_info["id"])
    if job.state == "done" and job.result is not None:
        return web.Response(body=job.result, content_type=job.media_type)
    if job.state in ("failed", "cancelled"):
        raise job.error
    raise JobNotReadyError(f"job {job.id} is {job.state} ({job.progress:.0%}); poll /v1/jobs/{job.id} until it is done")


async def delete_job(request: web.Request) -> web.Response:
    """Cancel an unfinished job; forget a finished one and free its result."""
    scheduler = request.app[SCHEDULER]
    job = scheduler.get(request.match_info["id"])
    if job.state in ("queued", "running"):
        scheduler.cancel(job, "the job was cancelled by its client")
        return web.json_response(job.status(), status=202 if job.state == "running" else 200)
    scheduler.forget(job)
    return web.json_response({**job.status(), "deleted": True})


async def read_work(request: web.Request) -> Work:
    """Options, size checks and decoding, cheapest refusals first."""
    settings, scheduler = request.app[SETTINGS], request.app[SCHEDULER]
    kind = protocol.body_kind(request.headers.get("Content-Type"))
    options = protocol.parse_options(request.query)
    scheduler.check_capacity()  # refuse before reading and decoding a body we cannot queue
    body = await request.read()
    if not body:
        raise BadImageError("the request body is empty; send the image as the body")
    strength = 1.0 if options.strength is None else options.strength
    media_type = protocol.RESPONSE_TYPES[kind]
    if kind == "msgpack":
        message = protocol.decode_message(body, settings.max_pixels)
        if message.strength is not None and options.strength is None:
            strength = message.strength
        return Work(message.pixels, strength, protocol.encode_message, media_type)
    try:
        width, height, found = imageio.peek_size(body)
    except UnsupportedFormatError:
        raise BadImageError(
            f"the body is not a {kind.upper()} image, although its Content-Type says {request.headers['Content-Type']}"
        ) from None
    if found != kind:
        raise BadImageError(
            f"the body is a {found.upper()} image, but its Content-Type says {request.headers['Content-Type']}"
        )
    protocol.check_pixels(width, height, settings.max_pixels)
    picture = await asyncio.get_running_loop().run_in_executor(None, imageio.decode, body)
    del body
    height, width = picture.pixels.shape[:2]
    protocol.check_pixels(width, height, settings.max_pixels)  # the header could have lied
    return Work(picture.pixels, strength, _encoder(picture.with_pixels(np.empty((1, 1, 1), np.uint8))), media_type)


def _encoder(template: imageio.Picture) -> Callable[[np.ndarray], bytes]:
    """Encode output pixels in the request's format, with its ICC profile and EXIF."""
    return lambda pixels: imageio.encode(template.with_pixels(pixels))
