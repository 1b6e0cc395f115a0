"""The HTTP handlers: the only server code that reads requests and builds responses.

Every handler raises typed errors (``plugin_server.errors`` and the server's own); the
middleware in ``app`` turns them into the JSON error body, once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
from aiohttp import web

from .. import __version__, imageio, wire
from ..errors import BadImageError, BadRequestError, NotFoundError, NotReadyError, TooLargeError, UnsupportedFormatError
from . import protocol
from .jobs import Job, Scheduler
from .openapi import openapi_document
from .settings import ServerSettings

SETTINGS = web.AppKey("settings", ServerSettings)
SCHEDULER = web.AppKey("scheduler", Scheduler)
MODEL_INFO = web.AppKey("model_info", dict)


@dataclass(frozen=True)
class Work:
    """A decoded request, ready for the scheduler."""

    pixels: np.ndarray
    options: wire.RetouchOptions
    render: Callable[[np.ndarray], bytes]
    render_mask: Callable[[np.ndarray], bytes]
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
        "tile_size": settings.engine.tile_size,
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
    job = scheduler.submit(work.pixels, work.options, work.render, work.render_mask, work.media_type, watched=True)
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
    return _image(result, job)


async def create_job(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    work = await read_work(request)
    job = scheduler.submit(work.pixels, work.options, work.render, work.render_mask, work.media_type, watched=False)
    return web.json_response(job.status(), status=202, headers={"Location": f"/v1/jobs/{job.id}"})


async def job_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SCHEDULER].get(request.match_info["id"]).status())


async def job_result(request: web.Request) -> web.Response:
    job = request.app[SCHEDULER].get(request.match_info["id"])
    if job.state == "done" and job.result is not None:
        return _image(job.result, job)
    if job.state in ("failed", "cancelled"):
        raise job.error
    raise NotReadyError(f"job {job.id} is {job.state} ({job.progress:.0%}); poll /v1/jobs/{job.id} until it is done")


async def job_mask(request: web.Request) -> web.Response:
    """The skin mask a finished job's edit went through (asked for with ``mask=true``)."""
    job = request.app[SCHEDULER].get(request.match_info["id"])
    if job.state in ("failed", "cancelled"):
        raise job.error
    if job.state != "done":
        raise NotReadyError(f"job {job.id} is {job.state} ({job.progress:.0%}); poll /v1/jobs/{job.id} until it is done")
    if job.mask is None:
        raise NotFoundError(f"job {job.id} has no skin mask: ask for one with mask=true and faces on when creating it")
    return _image(job.mask, job)


def _image(body: bytes, job: Job) -> web.Response:
    faces = "off" if job.faces is None else str(job.faces)
    return web.Response(body=body, content_type=job.media_type, headers={wire.FACES_HEADER: faces})


async def delete_job(request: web.Request) -> web.Response:
    """Cancel an unfinished job; forget a finished one and free its result."""
    scheduler = request.app[SCHEDULER]
    job = scheduler.get(request.match_info["id"])
    if job.state in wire.ACTIVE:
        scheduler.cancel(job, "the job was cancelled by its client")
        return web.json_response(job.status(), status=202 if job.state == "running" else 200)
    scheduler.forget(job)
    return web.json_response({**job.status(), "deleted": True})


async def read_work(request: web.Request) -> Work:
    """Options, size checks and decoding, cheapest refusals first."""
    settings, scheduler = request.app[SETTINGS], request.app[SCHEDULER]
    kind = wire.body_kind(request.headers.get("Content-Type"))
    options = wire.RetouchOptions.from_query(request.query.items())
    scheduler.check_capacity()  # refuse before reading and decoding a body we cannot queue
    body = await read_body(request, settings)
    if not body:
        raise BadImageError("the request body is empty; send the image as the body")
    media_type = wire.RESPONSE_TYPES[kind]
    if kind == "msgpack":
        pixels = protocol.pixels_from(wire.decode_message(body, settings.max_pixels))
        return Work(pixels, options, protocol.message_for, protocol.message_for, media_type)
    try:
        header = imageio.peek(body)
    except UnsupportedFormatError:
        raise BadImageError(
            f"the body is not a {kind.upper()} image, although its Content-Type says {request.headers['Content-Type']}"
        ) from None
    if header.format != kind:
        raise BadImageError(
            f"the body is a {header.format.upper()} image, but its Content-Type says {request.headers['Content-Type']}"
        )
    # decode() judges the header (size, samples, bits, pages, tiles) before it decodes a pixel.
    picture = await asyncio.get_running_loop().run_in_executor(None, imageio.decode, body, settings.max_pixels)
    del body
    template = picture.with_pixels(np.empty((1, 1, 1), np.uint8))
    # A gray mask takes no colour profile: an RGB ICC profile on it would be wrong.
    return Work(picture.pixels, options, _encoder(template), _encoder(dataclasses.replace(template, icc_profile=None)),
                media_type)


async def read_body(request: web.Request, settings: ServerSettings) -> bytes:
    """The whole body; refused before reading when its declared size is over the limit, and
    given up when the client stops sending, so a stalled upload cannot hold a connection."""
    limit = wire.max_body_bytes(settings.max_pixels)
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError(f"the request body is {request.content_length} bytes; this server accepts at most "
                            f"{limit} (an uncompressed float image of its largest size)")
    chunks, size = [], 0
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.readany(), settings.stall_seconds)
        except asyncio.TimeoutError:
            raise BadRequestError(f"the request body stopped arriving for {settings.stall_seconds:g} s; "
                                  "the upload was given up") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"the request body is larger than this server accepts ({limit} bytes)")
        chunks.append(chunk)


def _encoder(template: imageio.Picture) -> Callable[[np.ndarray], bytes]:
    """Encode pixels in the request's format, with its metadata (ICC profile, EXIF, resolution)."""
    return lambda pixels: imageio.encode(template.with_pixels(pixels))
