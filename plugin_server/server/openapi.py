"""The OpenAPI 3.1 description of the retouch API, served at GET /v1/openapi.json.

docs/api.md is the prose version; keep the two in step.
"""

from __future__ import annotations

from typing import Any

_IMAGE_TYPES = ("image/png", "image/jpeg", "image/tiff", "application/x-msgpack")
_BINARY = {"type": "string", "format": "binary"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _image_body(description: str) -> dict[str, Any]:
    return {"description": description, "content": {t: {"schema": _BINARY} for t in _IMAGE_TYPES}}


_ERRORS = {
    "400": _error("Bad image or bad option (code bad_image or bad_option)."),
    "401": _error("Missing or wrong bearer token (code unauthorized)."),
    "403": _error("Host or Origin is not this machine (code forbidden)."),
    "413": _error("Too many pixels or too large a body (code too_large)."),
    "415": _error("Unsupported Content-Type or image type (code unsupported_type)."),
    "503": _error("Queue full (code busy); see the Retry-After header."),
}
_JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_STRENGTH = {
    "name": "strength", "in": "query", "required": False,
    "description": "How much of the retouch to apply: 0 returns the input, 1 the model's edit, up to 2 exaggerates it. "
                   "Overrides the msgpack message's own strength.",
    "schema": {"type": "number", "minimum": 0, "maximum": 2, "default": 1},
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
            "/v1/health": {"get": {
                "summary": "Server, model and queue state.",
                "responses": {"200": {"description": "The server is up.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}},
            }},
            "/v1/openapi.json": {"get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3.1 JSON."}}}},
            "/v1/retouch": {"post": {
                "summary": "Retouch one image and wait for the result (same format as the request). "
                           "Closing the connection cancels the work.",
                "parameters": [_STRENGTH],
                "requestBody": {**_image_body("The image, or a msgpack pixel message."), "required": True},
                "responses": {"200": _image_body("The retouched image, in the request's format."), **_ERRORS},
            }},
            "/v1/jobs": {"post": {
                "summary": "Queue a retouch job, for large images and progress bars.",
                "parameters": [_STRENGTH],
                "requestBody": {**_image_body("The image, or a msgpack pixel message."), "required": True},
                "responses": {"202": _JOB_STATUS, **_ERRORS},
            }},
            "/v1/jobs/{id}": {
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
            "/v1/jobs/{id}/result": {"get": {
                "summary": "The retouched image of a finished job.",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _image_body("The retouched image, in the job's request format."),
                    "404": _error("Unknown or expired job (code not_found)."),
                    "409": _error("Not finished (code not_ready), or cancelled (code cancelled)."),
                    **{k: v for k, v in _ERRORS.items() if k in ("400", "415")},
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
                "type": "object", "required": ["id", "state", "progress"],
                "properties": {
                    "id": {"type": "string"},
                    "state": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
                    "progress": {"type": "number", "minimum": 0, "maximum": 1},
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
                "type": "object", "required": ["width", "height", "channels", "dtype", "data"],
                "properties": {
                    "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1},
                    "channels": {"enum": [1, 3, 4]}, "dtype": {"enum": ["u8", "u16", "f32"]},
                    "data": {"description": "msgpack bin: rows top to bottom, channels interleaved, little-endian; "
                                            "exactly width*height*channels*itemsize bytes."},
                    "strength": {"type": "number", "minimum": 0, "maximum": 2},
                },
            },
        }},
    }
