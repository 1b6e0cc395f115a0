"""The OpenAPI 3.1 description of the retouch API, served at GET /v1/openapi.json.

Built from the wire contract and the error classes, so it cannot drift from them; docs/api.md
is the prose version.
"""

from __future__ import annotations

from typing import Any

from .. import wire
from ..errors import status_by_code

_IMAGE_TYPES = tuple(wire.RESPONSE_TYPES.values())
_BINARY = {"type": "string", "format": "binary"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _image_body(description: str) -> dict[str, Any]:
    return {"description": description, "content": {t: {"schema": _BINARY} for t in _IMAGE_TYPES}}


# What a request that carries an image can be refused with.
_REQUEST_CODES = ("bad_image", "bad_option", "bad_request", "unauthorized", "forbidden", "too_large",
                  "unsupported_type", "busy", "out_of_memory", "internal")


def _errors(codes: tuple[str, ...]) -> dict[str, Any]:
    statuses = status_by_code()
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(statuses[code], []).append(code)
    return {str(status): _error(f"Code {' or '.join(names)}" + ("; see the Retry-After header." if "busy" in names else "."))
            for status, names in sorted(by_status.items())}


_ERRORS = _errors(_REQUEST_CODES)
_JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_STRENGTH = {
    "name": "strength", "in": "query", "required": False,
    "description": "How much of the retouch to apply: 0 returns the input, 1 the model's edit, up to 2 exaggerates it. "
                   "Given at most once; options travel only in the query.",
    "schema": {"type": "number", "minimum": 0, "maximum": wire.MAX_STRENGTH, "default": 1},
}
_JOB_STATUS = {"description": "The job's state.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobStatus"}}}}


def openapi_document(version: str, max_pixels: int) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AutoRetouch local retouch server",
            "version": version,
            "description": "Automatic face retouching for editor plug-ins. Listens on 127.0.0.1:8377 by default. "
                           f"Images up to {max_pixels} pixels. See docs/api.md for the msgpack message.",
        },
        "paths": {
            wire.HEALTH: {"get": {
                "summary": "Server, model and queue state.",
                "responses": {"200": {"description": "The server is up.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}},
            }},
            wire.OPENAPI: {"get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3.1 JSON."}}}},
            wire.RETOUCH: {"post": {
                "summary": "Retouch one image and wait for the result (same format as the request). "
                           "Closing the connection cancels the work.",
                "parameters": [_STRENGTH],
                "requestBody": {**_image_body("The image, or a msgpack pixel message."), "required": True},
                "responses": {"200": _image_body("The retouched image, in the request's format."), **_ERRORS},
            }},
            wire.JOBS: {"post": {
                "summary": "Queue a retouch job, for large images and progress bars.",
                "parameters": [_STRENGTH],
                "requestBody": {**_image_body("The image, or a msgpack pixel message."), "required": True},
                "responses": {"202": _JOB_STATUS, **_ERRORS},
            }},
            wire.JOBS + "/{id}": {
                "get": {
                    "summary": "Poll a job. Jobs not polled for a while are cancelled.",
                    "parameters": [_JOB_ID],
                    "responses": {"200": _JOB_STATUS, "404": _error("Unknown or expired job (code not_found).")},
                },
                "delete": {
                    "summary": "Cancel an unfinished job (it stops at the next tile), or discard a finished one.",
                    "parameters": [_JOB_ID],
                    "responses": {"200": _JOB_STATUS, "202": _JOB_STATUS, "404": _error("Unknown or expired job.")},
                },
            },
            wire.JOBS + "/{id}/result": {"get": {
                "summary": "The retouched image of a finished job.",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _image_body("The retouched image, in the job's request format."),
                    **_errors(("not_found", "not_ready", "cancelled", "bad_image", "out_of_memory", "internal")),
                },
            }},
        },
        "components": {"schemas": {
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }},
            },
            "JobStatus": {
                "type": "object", "required": ["id", "state", "phase", "progress"],
                "properties": {
                    "id": {"type": "string"},
                    "state": {"enum": list(wire.JOB_STATES)},
                    "phase": {"enum": list(wire.JOB_PHASES),
                              "description": "What the job is doing now: waiting, finding faces, retouching, "
                                             "encoding the result, or finished (see state)."},
                    "progress": {"type": "number", "minimum": 0, "maximum": 1},
                    "face": {"type": "integer", "minimum": 1,
                             "description": "While retouching face by face: the face being retouched (1-based)."},
                    "faces": {"oneOf": [{"type": "integer", "minimum": 0}, {"const": "off"}],
                              "description": "Faces found: while retouching face by face, and when done "
                                             "(0: nothing was changed; off: face finding was off)."},
                    "device": {"type": "string"},
                    "cancel_requested": {"type": "boolean"},
                    "deleted": {"type": "boolean"},
                    "error": {"$ref": "#/components/schemas/Error/properties/error"},
                },
            },
            "Health": {
                "type": "object",
                "properties": {
                    "status": {"const": "ok"}, "version": {"type": "string"}, "device": {"type": "string"},
                    "devices": {"type": "array", "items": {"type": "string"}},
                    "precision": {"type": "string"}, "tile_size": {"type": ["integer", "null"]},
                    "model": {"type": "object"}, "max_pixels": {"type": "integer"}, "queue": {"type": "object"},
                },
            },
            "PixelMessage": {
                "description": "application/x-msgpack body of requests and responses (a msgpack map; keys may be str or bin).",
                "type": "object", "required": list(wire.MESSAGE_FIELDS), "additionalProperties": False,
                "properties": {
                    "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1},
                    "channels": {"enum": list(wire.CHANNELS)}, "dtype": {"enum": list(wire.ITEMSIZE)},
                    "data": {"description": "msgpack bin: rows top to bottom, channels interleaved, little-endian; "
                                            "exactly width*height*channels*itemsize bytes."},
                },
            },
        }},
    }
