"""Face analysis time: detection + landmarks (find_faces) and the skin mask, at 2 MP and 24 MP.

    python -m bench.bench_faces             # prints a table, writes bench/results/faces.json

On the Pexels Ike Louie Natividad portrait (24 MP, IOD about 750 px) and the same photo resized
to 2 MP (IOD about 215 px, near FFHQ's scale; a 2 MP crop at native size would cut the face).
Each size runs in its own process, so the first call (which loads the models) and the peak RSS
are its own; timings are medians of REPEATS calls after that. Also the import time of the
runtime, in a fresh interpreter.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import cpu_name, peak_rss_mb
from plugin_server import imageio

ROOT = Path(__file__).resolve().parent.parent
PORTRAIT = ROOT.parent / "shared" / "data" / "portraits" / "pexels-ike-louie-natividad-2709388.jpg"
RESULTS = ROOT / "bench" / "results"
REPEATS = 5


def machine() -> str:
    return f"{cpu_name()}, Python {platform.python_version()}"


def worker(source: str) -> None:
    """One image in this process: first call, then medians of find_faces and skin_mask."""
    from plugin_server.faces import skin_mask
    from plugin_server.landmarks import find_faces

    image = np.load(source)
    start = time.perf_counter()
    faces = find_faces(image)
    first = time.perf_counter() - start
    detect, mask = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        faces = find_faces(image)
        detect.append(time.perf_counter() - start)
        start = time.perf_counter()
        masks = [skin_mask(image, face) for face in faces]
        mask.append(time.perf_counter() - start)
    print(json.dumps({
        "faces": len(faces),
        "iod": [round(face.iod, 1) for face in faces],
        "mask_pixels": [int(m.size) for m in masks],
        "first_call_s": first,
        "find_faces_s": statistics.median(detect),
        "skin_mask_s": statistics.median(mask),
        "total_s": statistics.median(detect) + statistics.median(mask),
        "peak_rss_mb": peak_rss_mb(),
    }))


def child(*args: str) -> dict:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def import_seconds() -> float:
    """Median over REPEATS fresh interpreters of importing the runtime's interpreter module."""
    code = "import time; t = time.perf_counter(); import ai_edge_litert.interpreter; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(REPEATS)]
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> dict:
    if not PORTRAIT.is_file():
        sys.exit(f"bench_faces: needs the real photos in {PORTRAIT.parent}")
    photo = imageio.read(PORTRAIT).pixels
    height, width = photo.shape[:2]
    scale = (2e6 / (height * width)) ** 0.5
    size = (round(width * scale), round(height * scale))
    small = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
    report: dict = {"machine": machine(), "repeats": REPEATS, "runtime_import_s": import_seconds(), "rows": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        for label, image in (("2MP", small), ("24MP", photo)):
            source = Path(tmpdir) / f"{label}.npy"
            np.save(source, image)
            measured = child("-m", "bench.bench_faces", "worker", str(source))
            row = {"image": label, "shape": list(image.shape), **measured}
            report["rows"].append(row)
    print_report(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faces.json").write_text(json.dumps(report, indent=2))
    return report


def print_report(report: dict) -> None:
    print(f"face analysis on {report['machine']} (median of {report['repeats']})")
    print(f"runtime import: {report['runtime_import_s'] * 1000:.0f} ms")
    print(f"{'image':6} {'faces':>5} {'IOD':>7} {'first call':>11} {'find_faces':>11} {'skin_mask':>10} "
          f"{'total':>8} {'peak RSS MB':>12}")
    for r in report["rows"]:
        if "error" in r:
            print(f"{r['image']:6} failed: {r['error']}")
            continue
        print(f"{r['image']:6} {r['faces']:5d} {r['iod'][0] if r['iod'] else 0:7.1f} {r['first_call_s']:10.3f}s "
              f"{r['find_faces_s']:10.3f}s {r['skin_mask_s']:9.3f}s {r['total_s']:7.3f}s {r['peak_rss_mb']:12.0f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2])
    else:
        main()
