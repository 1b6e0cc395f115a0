"""16 concurrent clients for 30 s on loopback: no errors, right answers, 503 when full, flat memory."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from plugin_server import checkpoint, engine, imageio, wire
from plugin_server.server import protocol
from plugin_server.wire import RetouchOptions
from server_fixtures import TILE, WHOLE, ffhq_crop, make_checkpoint, require_data, start_server

CLIENTS = 16
SECONDS = 30.0


@pytest.mark.slow
def test_sixteen_clients_for_thirty_seconds(tmp_path):
    require_data()
    ckpt = make_checkpoint(tmp_path / "g.pt")
    model = checkpoint.load(ckpt)
    # Each client has its own small crop, half PNG and half msgpack, and its own expected answer.
    bodies, wanted = [], []
    for i in range(CLIENTS):
        side = 64 + 4 * i
        pixels = ffhq_crop(1 + i % 9, (side, side), (300 + 10 * i, 300 + 7 * i))
        out = engine.retouch(pixels, model, RetouchOptions(tile_size=TILE, device="cpu"))
        if i % 2:
            bodies.append((imageio.encode(imageio.Picture(pixels, "png")), "image/png"))
        else:
            bodies.append((protocol.message_for(pixels), wire.MSGPACK_TYPE))
        wanted.append(out)

    server = start_server(ckpt, "--tile-size", str(TILE), "--queue-size", "4")
    try:
        for body, content_type in bodies[:2]:  # warm up before measuring memory
            server.request("POST", f"/v1/retouch?{WHOLE}", body, {"Content-Type": content_type})
        rss_before = server.rss_bytes()
        errors: list[str] = []
        counts = {"ok": 0, "busy": 0}
        lock = threading.Lock()
        stop = time.monotonic() + SECONDS

        def client(i: int) -> None:
            body, content_type = bodies[i]
            while time.monotonic() < stop:
                status, headers, answer = server.request("POST", f"/v1/retouch?{WHOLE}", body, {"Content-Type": content_type})
                if status == 503:
                    with lock:
                        counts["busy"] += 1
                    if "retry-after" not in headers:
                        errors.append(f"client {i}: 503 without Retry-After")
                    time.sleep(min(float(headers.get("retry-after", 1)), 2.0))
                    continue
                if status != 200:
                    errors.append(f"client {i}: HTTP {status} {answer[:200]!r}")
                    return
                got = (protocol.pixels_from(wire.decode_message(answer, 10**9)) if content_type == wire.MSGPACK_TYPE
                       else imageio.decode(answer).pixels)
                if not np.array_equal(got, wanted[i]):
                    errors.append(f"client {i}: wrong pixels")
                    return
                with lock:
                    counts["ok"] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SECONDS + 120)
        assert not errors, errors[:5]
        assert counts["ok"] >= CLIENTS, counts
        assert counts["busy"] > 0, f"16 clients never filled a queue of 4: {counts}"
        growth = server.rss_bytes() - rss_before
        assert growth <= 100 * 2**20, f"RSS grew by {growth / 2**20:.0f} MB"
        assert server.health()["queue"]["failed"] == 0
    finally:
        server.stop()
