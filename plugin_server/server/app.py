"""The aiohttp application: ``init_app()``, its routes, and the one error-translating middleware.

    app = init_app(settings, models, model_info)
    web.run_app(app, host=settings.host, port=settings.port, handler_cancellation=True)

``handler_cancellation=True`` matters: it is what cancels a synchronous retouch when its
client disconnects (see ``handlers.retouch``).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from .. import wire
from ..errors import AutoRetouchError, BadRequestError, BusyError, InternalError, MethodNotAllowedError, NotFoundError, TooLargeError
from ..model import Model
from . import handlers
from .handlers import MODEL_INFO, SCHEDULER, SETTINGS
from .jobs import Scheduler, log_bug
from .security import is_loopback_bind, security_middleware
from .settings import ServerSettings


def init_app(settings: ServerSettings, models: dict[str, Model], model_info: dict[str, Any]) -> web.Application:
    app = web.Application(client_max_size=wire.max_body_bytes(settings.max_pixels))
    app[SETTINGS] = settings
    app[MODEL_INFO] = model_info
    app[SCHEDULER] = Scheduler(models, settings)
    setup_routes(app)
    setup_middlewares(app)
    app.cleanup_ctx.append(_run_scheduler)
    return app


def setup_routes(app: web.Application) -> None:
    app.add_routes([
        web.get(wire.HEALTH, handlers.health),
        web.get(wire.OPENAPI, handlers.openapi),
        web.post(wire.RETOUCH, handlers.retouch),
        web.post(wire.JOBS, handlers.create_job),
        web.get(wire.JOBS + "/{id}", handlers.job_status),
        web.delete(wire.JOBS + "/{id}", handlers.delete_job),
        web.get(wire.JOBS + "/{id}/result", handlers.job_result),
        web.get(wire.JOBS + "/{id}/mask", handlers.job_mask),
    ])


def setup_middlewares(app: web.Application) -> None:
    settings = app[SETTINGS]
    # The error middleware is outermost, so security refusals get the same JSON body.
    app.middlewares.append(error_middleware)
    app.middlewares.append(security_middleware(settings.token, check_host=is_loopback_bind(settings.host)))


async def _run_scheduler(app: web.Application) -> AsyncIterator[None]:
    scheduler = app[SCHEDULER]
    await scheduler.start()
    yield
    await scheduler.stop()


def error_response(exc: AutoRetouchError, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": exc.code, "message": str(exc)}}
    if isinstance(exc, BusyError):
        headers = {**(headers or {}), "Retry-After": str(max(1, round(exc.retry_after)))}
    return web.json_response(body, status=exc.status, headers=headers)


def _from_aiohttp(request: web.Request, exc: web.HTTPException) -> AutoRetouchError:
    """aiohttp's own refusals (unknown route, wrong method, body over the limit) as our errors."""
    if exc.status == 404:
        return NotFoundError(f"there is no {request.path} on this server; see {wire.OPENAPI}")
    if exc.status == 405:
        return MethodNotAllowedError(f"{request.method} is not allowed on {request.path}")
    if exc.status == 413:
        limit = wire.max_body_bytes(request.app[SETTINGS].max_pixels)
        return TooLargeError(f"the request body is larger than this server accepts ({limit} bytes, "
                             "an uncompressed float image of its largest size)")
    return BadRequestError(f"{exc.reason} ({exc.status}); see {wire.OPENAPI} for the API")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes {"error": {"code", "message"}} with its status, here and only here."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(_from_aiohttp(request, exc), allow)
    except asyncio.CancelledError:
        raise
    except AutoRetouchError as exc:
        if exc.status >= 500 and exc.status != 503 and not isinstance(exc, InternalError):  # a bug
            exc = log_bug(f"handling {request.method} {request.path}")
        return error_response(exc)
    except Exception:
        return error_response(log_bug(f"handling {request.method} {request.path}"))
