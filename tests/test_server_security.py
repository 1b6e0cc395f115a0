"""Host, Origin and token rules, as pure functions and on the real server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from plugin_server.errors import BadConfigError, CheckpointError
from plugin_server.server.security import (
    is_allowed_origin, is_loopback_host_header, token_matches, validate_token,
)
from server_fixtures import make_checkpoint, start_server

TOKEN = "s3cret-token"


@pytest.mark.parametrize("host", ["localhost", "localhost:8377", "LOCALHOST:1", "127.0.0.1", "127.0.0.1:8377",
                                  "127.1.2.3:9", "[::1]", "[::1]:8377"])
def test_loopback_hosts_are_allowed(host):
    assert is_loopback_host_header(host)


@pytest.mark.parametrize("host", [None, "", "evil.com", "evil.com:8377", "127.0.0.1.evil.com", "localhost.evil.com",
                                  "0.0.0.0", "192.168.1.2:8377", "[::2]:80", "::1", "localhost:port", "[::1]x"])
def test_foreign_hosts_are_refused(host):
    assert not is_loopback_host_header(host)


@pytest.mark.parametrize("origin", [None, "http://localhost", "http://localhost:3000", "https://127.0.0.1:8377",
                                    "http://[::1]:5173"])
def test_local_origins_are_allowed(origin):
    assert is_allowed_origin(origin)


@pytest.mark.parametrize("origin", ["null", "http://evil.com", "http://localhost.evil.com", "file://",
                                    "http://127.0.0.1:99999", "ftp://localhost", ""])
def test_foreign_origins_are_refused(origin):
    assert not is_allowed_origin(origin)


def test_token_comparison():
    assert token_matches(f"Bearer {TOKEN}", TOKEN) and token_matches(f"bearer  {TOKEN} ", TOKEN)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", "Bearer wrong", f"Bearer {TOKEN}x"):
        assert not token_matches(header, TOKEN)


@pytest.mark.parametrize("header", ["Bearer \udcff\udcfe", "Bearer \ud800", "Bearer s3cret-tokén", "Bearer é",
                                    "Bearer \x00", "\udcc3\udca9 s3cret-token", "Bearer s3cret-token\udcff"])
def test_any_authorization_text_is_a_plain_mismatch(header):
    assert token_matches(header, TOKEN) is False  # never an exception: a 401, not a 500


@pytest.mark.parametrize("token", ["", " ", "\t\n", "two words", "tokén", "tab\tinside", "new\nline"])
def test_tokens_no_request_could_present_are_refused(token):
    with pytest.raises(BadConfigError, match="token"):
        validate_token(token)


def test_usable_tokens_are_kept():
    assert validate_token(None) is None
    assert validate_token(TOKEN) == TOKEN and validate_token("A-z_0.9~+/=!$") == "A-z_0.9~+/=!$"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("security") / "g.pt")


@pytest.fixture(scope="module")
def server(ckpt):
    server = start_server(ckpt, token=TOKEN)
    yield server
    server.stop()


def test_token_is_required_on_every_request(server):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        status, body = server.json("GET", "/v1/health", headers=headers)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = server.json("POST", "/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert status == 401
    assert server.json("GET", "/v1/health")[0] == 200  # the fixture sends the right token


def _raw_request(port: int, authorization: bytes) -> tuple[int, bytes]:
    """GET /v1/health with these exact Authorization bytes (http.client would re-encode them)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + authorization
                     + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("authorization", [b"Bearer \xff\xfe\xfd", b"Bearer s3cret-tok\xc3\xa9n", b"Bearer \xc3\x28",
                                           b"\xe2\x82\xac " + TOKEN.encode(), b"Bearer " + TOKEN.encode() + b"\x80"])
def test_non_ascii_authorization_bytes_get_401_not_500(server, authorization):
    status, body = _raw_request(server.port, authorization)
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("host", ["evil.com", "attacker.example:8377", "192.168.0.10:8377"])
def test_dns_rebinding_host_is_refused(server, host):
    status, body = server.json("GET", "/v1/health", headers={"Host": host})
    assert status == 403 and body["error"]["code"] == "forbidden"


@pytest.mark.parametrize("host", ["localhost:1234", "127.0.0.1", "[::1]:8377"])
def test_loopback_host_is_served(server, host):
    assert server.json("GET", "/v1/health", headers={"Host": host})[0] == 200


def test_foreign_origin_is_refused_and_local_one_served(server):
    status, body = server.json("POST", "/v1/retouch", body=b"x", headers={"Origin": "https://evil.com",
                                                                          "Content-Type": "image/png"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert server.json("GET", "/v1/health", headers={"Origin": "null"})[0] == 403
    assert server.json("GET", "/v1/health", headers={"Origin": "http://localhost:5173"})[0] == 200


def test_non_loopback_bind_needs_a_token(ckpt):
    result = subprocess.run(
        [sys.executable, "-m", "plugin_server.server.main", "--checkpoint", str(ckpt), "--host", "0.0.0.0",
         "--port", "1"], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2 and "token" in result.stderr, result.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "plugin_server.server.main", "--checkpoint", str(tmp_path / "absent.pt"),
                             "--port", "1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == CheckpointError.exit_code and "absent.pt" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
