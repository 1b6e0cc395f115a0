"""Server overhead: a 24 MP photo through HTTP versus the same work in-process.

    python -m bench.bench_server [--runs 3] [--small]

For the 24 MP Pexels JPEG and a 16-bit TIFF made from it, times decode + retouch + encode
in-process and the same image through POST /v1/retouch on a real server on loopback (same
checkpoint, same tile size, same device), and prints the medians side by side. The goal is
HTTP <= 1.10x in-process. Writes bench/results/server.json. ``--small`` uses a narrow
generator (8/16 channels, 2 blocks) so that repeated 24 MP runs fit on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from plugin_server import checkpoint, engine, imageio
from plugin_server.model import Generator, GeneratorConfig, Model
from plugin_server.wire import RetouchOptions

PHOTO = Path(__file__).resolve().parent.parent.parent / "shared/data/portraits/pexels-ike-louie-natividad-2709388.jpg"
RESULTS = Path(__file__).resolve().parent / "results" / "server.json"
TILE = 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="narrow generator for slow CPUs")
    args = parser.parse_args(argv)
    if not PHOTO.is_file():
        print(f"skipped: {PHOTO} is absent", file=sys.stderr)
        return {}
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from server_fixtures import start_server  # the tests' real-process launcher

    config = GeneratorConfig(full_channels=8, body_channels=16, blocks=2) if args.small else GeneratorConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        ckpt = tmp / "g.pt"
        checkpoint.save(ckpt, Model(Generator(config)))
        jpeg = PHOTO.read_bytes()
        picture = imageio.decode(jpeg)
        tiff = imageio.encode(imageio.Picture(picture.pixels.astype(np.uint16) * 257, "tiff", picture.icc_profile))
        del picture
        model = checkpoint.load(ckpt)
        options = RetouchOptions(faces=False, tile_size=TILE, device="cpu")  # the whole image on both sides
        rows = []
        server = start_server(ckpt, "--tile-size", str(TILE), "--max-pixels", "30000000")
        try:
            for name, data, mime in (("24 MP JPEG", jpeg, "image/jpeg"), ("24 MP 16-bit TIFF", tiff, "image/tiff")):
                local = _median(args.runs, lambda: imageio.encode(
                    (p := imageio.decode(data)).with_pixels(engine.retouch(p.pixels, model, options))))
                remote = _median(args.runs, lambda: _post(server.url, data, mime))
                rows.append({"image": name, "bytes": len(data), "in_process_s": local, "http_s": remote,
                             "ratio": remote / local})
        finally:
            server.stop()
    report = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "generator": config.to_dict(), "tile_size": TILE, "runs": args.runs, "goal_ratio": 1.10, "rows": rows,
    }
    print(f"{'image':20} {'in-process s':>13} {'HTTP s':>9} {'ratio':>7}")
    for row in rows:
        print(f"{row['image']:20} {row['in_process_s']:13.2f} {row['http_s']:9.2f} {row['ratio']:7.3f}")
    print(report["machine"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    return report


def _post(url: str, data: bytes, mime: str) -> bytes:
    request = urllib.request.Request(f"{url}/v1/retouch?faces=false", data=data, method="POST", headers={"Content-Type": mime})
    with urllib.request.urlopen(request, timeout=1800) as response:
        return response.read()


def _median(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
