"""`autoretouch retouch` of a 24 MP portrait end to end: faces on, faces off, and the file I/O alone.

    python -m bench.bench_retouch            # prints a table, writes bench/results/retouch.json

Every command is a whole `autoretouch` process (in-process work, CPU, fp32) on the Pexels Ike
Louie Natividad JPEG, run in turn (A B C A B C ...) so drift hits all alike; figures are medians
of REPEATS. The bundled model (trained at an IOD of 256 px) runs with faces on as shipped, each
face resampled to that scale, which is what the face engine is for, and the same weights declared
native-scale (each face retouched at its own size, here about 1000 px between the eyes) show what
the scale saves; the bundled model also runs through a server started once beforehand (how a
studio works: the process then imports no torch and loads no model). "decode + encode" reads and
writes the same file through the same code with no retouch: the floor of any end-to-end time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_faces import PORTRAIT, RESULTS, machine
from plugin_server import checkpoint

REPEATS = 3
AUTORETOUCH = [sys.executable, "-m", "plugin_server"]
IO_ONLY = "from plugin_server import imageio; import sys; imageio.write(sys.argv[2], imageio.read(sys.argv[1]))"


def commands(folder: Path, native: Path, server: str) -> dict[str, list[str]]:
    out = str(folder / "out.jpg")
    retouch = [*AUTORETOUCH, "retouch", str(PORTRAIT), out]
    return {
        "faces off (whole image)": [*retouch, "--device", "cpu", "--no-faces", "--checkpoint", str(checkpoint.BUNDLED)],
        "faces on, weights at native scale": [*retouch, "--device", "cpu", "--checkpoint", str(native)],
        "faces on, bundled (IOD 256)": [*retouch, "--device", "cpu", "--checkpoint", str(checkpoint.BUNDLED)],
        "the same, through a server": [*retouch, "--server", server],
        "decode + encode only": [sys.executable, "-c", IO_ONLY, str(PORTRAIT), out],
    }


@contextlib.contextmanager
def running_server(model: Path):
    """``autoretouch-server`` on a free loopback port with ``model``, until the block ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "plugin_server.server.main", "--port", str(port), "--device", "cpu",
                             "--checkpoint", str(model)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        from plugin_server.client import Client

        deadline = time.monotonic() + 120
        while not Client(url).available():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark's server did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        native = Path(tmp) / "native.pt"
        checkpoint.save(native, dataclasses.replace(checkpoint.load(checkpoint.BUNDLED), scale=None))
        runs = commands(Path(tmp), native, stack.enter_context(running_server(checkpoint.BUNDLED)))
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(REPEATS):
            for name, command in runs.items():
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    off, io = medians["faces off (whole image)"], medians["decode + encode only"]
    rows = {name: {"median_s": round(m, 2), "all_s": [round(t, 2) for t in times[name]],
                   "faces_off_over_this": round(off / m, 2), "over_decode_encode": round(m / io, 2)}
            for name, m in medians.items()}
    report = {"machine": machine(), "image": PORTRAIT.name, "repeats": REPEATS, "rows": rows}
    (RESULTS / "retouch.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{PORTRAIT.name}, {machine()}, medians of {REPEATS}")
    print(f"{'command':32} {'median s':>9} {'off / this':>11} {'/ decode+encode':>16}")
    for name, row in rows.items():
        print(f"{name:32} {row['median_s']:9.2f} {row['faces_off_over_this']:10.2f}x {row['over_decode_encode']:15.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
