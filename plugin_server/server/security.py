"""Who may talk to the server: loopback Host names, same-machine Origins, and the bearer token.

A web page in the user's browser can reach 127.0.0.1; these rules stop it from using the
server. DNS rebinding shows up as a foreign Host, a cross-site fetch as a foreign Origin.
When the server binds a non-loopback address a token is mandatory (see ``main``), and the
Host rule is then left to the token: remote clients legitimately use the machine's own name.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import BadConfigError, ForbiddenError, UnauthorizedError

# RFC 9110 token68-style: visible ASCII, no spaces. Anything else either cannot be sent in a
# header by every client (non-ASCII is encoded differently by each) or never matches
# (whitespace is stripped from the header before the comparison).
_TOKEN_CHARACTERS = frozenset(chr(c) for c in range(0x21, 0x7F))


def is_loopback_name(host: str) -> bool:
    """localhost, any 127.x.x.x, or ::1 (no brackets, no port)."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_host_header(value: str | None) -> bool:
    """A Host header naming this machine's loopback interface, with any port."""
    if not value:
        return False
    value = value.strip()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not _is_port(rest)):
            return False
        return ":" in name and is_loopback_name(name)
    name, sep, port = value.partition(":")
    if sep and not port.isdigit():
        return False
    return is_loopback_name(name) and ":" not in name


def is_allowed_origin(origin: str | None) -> bool:
    """No Origin (editors, curl) or one served from this machine's loopback."""
    if origin is None:
        return True
    try:
        parts = urlsplit(origin.strip())
        parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and is_loopback_name(parts.hostname)


def validate_token(token: str | None) -> str | None:
    """The configured token, or BadConfigError when no request could ever present it."""
    if token is None:
        return None
    if not token.strip():
        raise BadConfigError("the server's token is empty or only whitespace; set a real secret or none at all")
    if not set(token) <= _TOKEN_CHARACTERS:
        raise BadConfigError(
            "the server's token may hold only visible ASCII characters (letters, digits, punctuation; no spaces), "
            "as clients send it in an HTTP header"
        )
    return token


def token_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time; False for any other text."""
    if not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # aiohttp decodes header bytes as UTF-8 with surrogateescape, so a header can hold lone
    # surrogates that strict UTF-8 cannot encode; surrogatepass encodes any str, and such a
    # header then simply differs from the (visible ASCII) token.
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def is_loopback_bind(address: str) -> bool:
    return is_loopback_name(address.strip("[]"))


def security_middleware(token: str | None, check_host: bool):
    """Refuse foreign Host (403), foreign Origin (403), then a missing or wrong token (401)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if check_host and not is_loopback_host_header(request.headers.get("Host")):
            raise ForbiddenError(
                "this server only answers requests addressed to localhost, 127.0.0.1 or [::1] "
                f"(the Host header was {request.headers.get('Host')!r})"
            )
        if not is_allowed_origin(request.headers.get("Origin")):
            raise ForbiddenError(
                f"requests from web pages are refused (Origin {request.headers.get('Origin')!r} "
                "is not this machine)"
            )
        if token is not None and not token_matches(request.headers.get("Authorization"), token):
            raise UnauthorizedError("this server needs 'Authorization: Bearer <token>' with its token")
        return await handler(request)

    return middleware


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit()
