"""Soak: does the server's memory level off under hours-like load, or keep rising?

    python -m bench.bench_soak [--seconds 600] [--clients 4] [--interval 10]

Starts the real ``autoretouch-server`` (bundled starter model, tile 256) on a free loopback
port and runs a bounded load from ``--clients`` threads on 127.0.0.1, each waiting for its answer
before sending the next request: small photos as PNG, JPEG, 16-bit TIFF and msgpack through
``POST /v1/retouch``; jobs that are polled, fetched and deleted, and some left for the result
lifetime (60 s here) to expire; health checks; and malformed requests. It samples the server
process's RSS every ``--interval`` seconds, prints it as it goes, stops by itself after
``--seconds`` and writes bench/results/soak.json (``--out``). Not part of ``make test``.

RSS "plateaus" when its least-squares slope over the second half of the run is under
1 MB/min; the JSON keeps every sample so the curve can be judged by eye too.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import tifffile

from plugin_server import imageio

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO.parent / "shared/data/portraits/ffhq-00001.png"
RESULTS = REPO / "bench" / "results" / "soak.json"
PLATEAU_SLOPE_MB_PER_MIN = 1.0


@dataclass(frozen=True)
class Request:
    kind: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None
    expect: tuple[int, ...] = (200,)


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def add(self, kind: str, status: int, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.counts[f"{kind} {status}"] += 1
            if not ok and len(self.unexpected) < 20:
                self.unexpected.append(f"{kind}: {status} {detail[:200]}")

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())


def photo_crop(size: tuple[int, int]) -> np.ndarray:
    """A real face crop when the shared photos are beside the checkout, else a textured gradient."""
    h, w = size
    if PHOTO.is_file():
        return imageio.read(PHOTO).pixels[400:400 + h, 380:380 + w].copy()
    y, x = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(0).integers(0, 12, (h, w, 3))
    return np.clip(np.dstack([120 + x // 4, 90 + y // 4, 80 + (x + y) // 8]) + noise, 0, 255).astype(np.uint8)


def requests_to_send() -> list[Request]:
    pixels = photo_crop((192, 256))
    png = imageio.encode(imageio.Picture(pixels, "png"))
    jpeg = imageio.encode(imageio.Picture(pixels, "jpeg"))
    tiff16 = imageio.encode(imageio.Picture(pixels.astype(np.uint16) * 257, "tiff"))
    message = msgpack.packb({"width": pixels.shape[1], "height": pixels.shape[0], "channels": 3, "dtype": "u8",
                             "data": pixels.tobytes()}, use_bin_type=True)
    pages = io.BytesIO()
    tifffile.imwrite(pages, np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    bomb = bytearray(png[:64])
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    return [
        Request("retouch png", "POST", "/v1/retouch", png, "image/png"),
        Request("retouch jpeg", "POST", "/v1/retouch", jpeg, "image/jpeg"),
        Request("retouch tiff16", "POST", "/v1/retouch", tiff16, "image/tiff"),
        Request("retouch msgpack", "POST", "/v1/retouch", message, "application/x-msgpack"),
        Request("job", "POST", "/v1/jobs", png, "image/png", (202,)),
        Request("abandoned job", "POST", "/v1/jobs", jpeg, "image/jpeg", (202,)),
        Request("health", "GET", "/v1/health"),
        Request("truncated", "POST", "/v1/retouch", png[: len(png) // 2], "image/png", (400,)),
        Request("bomb header", "POST", "/v1/retouch", bytes(bomb), "image/png", (413,)),
        Request("multi-page", "POST", "/v1/retouch", pages.getvalue(), "image/tiff", (415,)),
        Request("unknown type", "POST", "/v1/retouch", png, "image/gif", (415,)),
    ]


def client(server, requests: list[Request], weights: list[int], seed: int, stop: threading.Event,
           tally: Tally) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        request = rng.choices(requests, weights)[0]
        headers = {"Content-Type": request.content_type} if request.content_type else {}
        try:
            status, response_headers, answer = server.request(request.method, request.path, request.body, headers,
                                                              timeout=120)
        except OSError as exc:
            tally.add(request.kind, 0, False, repr(exc))
            continue
        if status == 503 and "retry-after" in response_headers:  # busy: the documented back-off
            tally.add(request.kind, status, True)
            time.sleep(float(response_headers["retry-after"]))
            continue
        tally.add(request.kind, status, status in request.expect, answer.decode("utf-8", "replace"))
        if status == 202 and request.kind == "job":
            follow_job(server, json.loads(answer)["id"], tally)


def follow_job(server, job_id: str, tally: Tally) -> None:
    """Poll until done, fetch the result, delete the job: what the GIMP plug-in does."""
    while True:
        status, body = server.json("GET", f"/v1/jobs/{job_id}", timeout=60)
        if status != 200 or body["state"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    status, _, _ = server.request("GET", f"/v1/jobs/{job_id}/result", timeout=60)
    tally.add("job result", status, status == 200)
    status, _, _ = server.request("DELETE", f"/v1/jobs/{job_id}", timeout=60)
    tally.add("job delete", status, status == 200)


def slope_mb_per_min(samples: list[dict]) -> float:
    t = np.array([s["t"] for s in samples]) / 60
    rss = np.array([s["rss_mb"] for s in samples])
    return float(np.polyfit(t, rss, 1)[0]) if len(samples) >= 3 else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="how long the load runs (default: 600)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default: 4)")
    parser.add_argument("--interval", type=float, default=10, help="seconds between RSS samples (default: 10)")
    parser.add_argument("--kinds", help="comma list of request kinds to send, to find what grows "
                                        "(default: all; e.g. 'health,truncated' or 'retouch png')")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file (default: %(default)s)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    from server_fixtures import start_server  # the tests' real-process launcher

    mix = list(zip(requests_to_send(), [6, 4, 3, 4, 3, 1, 2, 1, 1, 1, 1]))
    if args.kinds:
        wanted = {kind.strip() for kind in args.kinds.split(",")}
        mix = [(request, weight) for request, weight in mix if request.kind in wanted]
        if not mix:
            parser.error(f"no request kind among {args.kinds!r}")
    requests, weights = [request for request, _ in mix], [weight for _, weight in mix]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server = start_server(None, "--tile-size", "256", "--result-ttl", "60", "--idle-timeout", "30",
                          log_dir=args.out.parent)
    tally, stop, samples = Tally(), threading.Event(), []
    threads = [threading.Thread(target=client, args=(server, requests, weights, i, stop, tally), daemon=True)
               for i in range(args.clients)]
    started = time.monotonic()
    try:
        samples.append({"t": 0.0, "rss_mb": server.rss_bytes() / 2**20, "requests": 0})
        print(f"server pid {server.proc.pid} on {server.url}; {args.clients} clients for {args.seconds:.0f} s")
        print(f"{'t (s)':>7} {'RSS (MB)':>9} {'requests':>9}")
        print(f"{0:7.0f} {samples[0]['rss_mb']:9.1f} {0:9d}", flush=True)
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - started) < args.seconds:
            time.sleep(min(args.interval, args.seconds - elapsed))
            sample = {"t": round(time.monotonic() - started, 1), "rss_mb": round(server.rss_bytes() / 2**20, 1),
                      "requests": tally.total()}
            samples.append(sample)
            print(f"{sample['t']:7.0f} {sample['rss_mb']:9.1f} {sample['requests']:9d}", flush=True)
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        alive = server.alive()
    finally:
        stop.set()
        server.stop()
    second_half = [s for s in samples if s["t"] >= args.seconds / 2]
    slope = slope_mb_per_min(second_half)
    result = {
        "bench": "soak", "seconds": args.seconds, "clients": args.clients, "interval": args.interval,
        "kinds": sorted({request.kind for request in requests}),
        "machine": platform.platform(), "server_alive_at_end": alive,
        "rss_start_mb": samples[0]["rss_mb"], "rss_end_mb": samples[-1]["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "rss_max_first_half_mb": max(s["rss_mb"] for s in samples if s["t"] < args.seconds / 2),
        "rss_max_second_half_mb": max(s["rss_mb"] for s in second_half),
        "slope_second_half_mb_per_min": round(slope, 3),
        "plateau": bool(slope < PLATEAU_SLOPE_MB_PER_MIN),
        "requests": tally.total(), "counts": dict(sorted(tally.counts.items())), "unexpected": tally.unexpected,
        "samples": samples,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"RSS {result['rss_start_mb']:.0f} -> {result['rss_end_mb']:.0f} MB (max {result['rss_max_mb']:.0f}); "
          f"second-half slope {slope:+.2f} MB/min: {'plateau' if result['plateau'] else 'STILL RISING'}; "
          f"{result['requests']} requests, {len(tally.unexpected)} unexpected answers; {args.out}")
    return result


if __name__ == "__main__":
    main()
