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

from ..errors import AutoRetouchError, BusyError
from ..model import Generator
from . import handlers
from .handlers import MODEL_INFO, SCHEDULER, SETTINGS
from .jobs import InternalError, Scheduler, log_bug
from .security import is_loopback_bind, security_middleware
from .settings import ServerSettings, max_body_bytes

# Error code -> HTTP status. Codes not listed are server-side failures (500).
STATUS_BY_CODE = {
    "bad_image": 400,
    "bad_option": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "not_ready": 409,
    "cancelled": 409,
    "too_large": 413,
    "unsupported_type": 415,
    "busy": 503,
    "out_of_memory": 503,
}
# For aiohttp's own refusals (unknown route, wrong method, body over client_max_size).
CODE_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def init_app(settings: ServerSettings, models: dict[str, Generator], model_info: dict[str, Any]) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes(settings.max_pixels))
    app[SETTINGS] = settings
    app[MODEL_INFO] = model_info
    app[SCHEDULER] = Scheduler(models, settings)
    setup_routes(app)
    setup_middlewares(app)
    app.cleanup_ctx.append(_run_scheduler)
    return app


def setup_routes(app: web.Application) -> None:
    app.add_routes([
        web.get("/v1/health", handlers.health),
        web.get("/v1/openapi.json", handlers.openapi),
        web.post("/v1/retouch", handlers.retouch),
        web.post("/v1/jobs", handlers.create_job),
        web.get("/v1/jobs/{id}", handlers.job_status),
        web.delete("/v1/jobs/{id}", handlers.delete_job),
        web.get("/v1/jobs/{id}/result", handlers.job_result),
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


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes {"error": {"code", "message"}} with its status, here and only here."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = CODE_BY_STATUS.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 413:
            limit = max_body_bytes(request.app[SETTINGS].max_pixels)
            message = f"the request body is larger than this server accepts ({limit} bytes, derived from --max-pixels)"
        elif exc.status == 404:
            message = f"there is no {request.path} on this server; see /v1/openapi.json"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        return error_response(exc.status, code, message, headers={
            k: v for k, v in exc.headers.items() if k.lower() == "allow"
        })
    except asyncio.CancelledError:
        raise
    except AutoRetouchError as exc:
        status = STATUS_BY_CODE.get(exc.code, 500)
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, BusyError) else None
        if status == 500 and not isinstance(exc, InternalError):
            exc = log_bug(f"handling {request.method} {request.path}")
        return error_response(status, exc.code, str(exc), headers)
    except Exception:
        exc = log_bug(f"handling {request.method} {request.path}")
        return error_response(500, exc.code, str(exc))
