"""Engine throughput, exactness and memory against MONAI and naive whole-image inference.

    python -m bench.bench_engine            # prints a table, writes bench/results/engine.json

Each method runs in its own process (so each peak RSS is its own), side by side in one run,
on real photos from ../shared/data/portraits: a 2 MP crop and the 24 MP portrait, with the
default network's random weights and, where it is installed, the bundled starter model (the same
network plus its edit floor). Timings are medians. Also: achieved GFLOP/s against the measured
peak of one conv of the body's shape, a 100 MP 16-bit TIFF through `autoretouch retouch` (peak
RSS), and on CUDA the bf16 roofline.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import cpu_name, peak_rss_mb
from plugin_server import checkpoint, engine, imageio
from plugin_server.engine import auto_tile
from plugin_server.model import Generator, Model
from plugin_server.tiling import TilePlan
from plugin_server.wire import RetouchOptions

ROOT = Path(__file__).resolve().parent.parent
PORTRAIT = ROOT.parent / "shared" / "data" / "portraits" / "pexels-ike-louie-natividad-2709388.jpg"
RESULTS = ROOT / "bench" / "results"
REPEATS = 3


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu_name()}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def retouch(image: np.ndarray, generator: Generator, floor: float = 0.0, **options) -> np.ndarray:
    """The engine on a bare generator (served without a floor unless given one)."""
    return engine.retouch(image, Model(generator, residual_floor=floor), RetouchOptions(**options))


def model() -> Generator:
    torch.manual_seed(0)
    return Generator().eval()


def starter() -> Model:
    """The bundled starter model: the default network with trained weights and an edit floor."""
    return checkpoint.load(checkpoint.BUNDLED)


def window_side(image: np.ndarray, generator: Generator) -> int:
    """The engine's window side for this image, so MONAI gets the same window."""
    core, _ = auto_tile(generator, torch.device("cpu"), torch.float32, *image.shape[:2])
    plan = TilePlan.create(*image.shape[:2], core, generator.receptive_radius, generator.stride)
    return max(plan.window_height, plan.window_width)


def run_method(method: str, image: np.ndarray, generator: Generator) -> np.ndarray:
    if method == "starter":
        return engine.retouch(image, generator)  # a Model: its own floor
    if method == "engine":
        return retouch(image, generator)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W) NCHW fp32
    with torch.inference_mode():
        if method == "naive":
            y = generator(x.contiguous())
        else:
            from monai.inferers import sliding_window_inference

            side = window_side(image, generator)
            y = sliding_window_inference(x, (side, side), 1, generator, overlap=0.25, mode="gaussian")
    return (y[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def worker(method: str, source: str, out: str) -> None:
    """One method in this process: median time over REPEATS, output saved for the diff."""
    image = np.load(source)
    generator = starter() if method == "starter" else model()  # built once: only inference is timed
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = run_method(method, image, generator)
        times.append(time.perf_counter() - start)
    np.save(out, result)
    print(json.dumps({"seconds": statistics.median(times), "peak_rss_mb": peak_rss_mb()}))


def child(*args: str, timeout: float = 1800) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_engine", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fits_whole(image: np.ndarray, generator: Generator) -> bool:
    """Whole-image eager needs ~ (3 + 2*full + full) fp32 maps alive; keep within half the RAM."""
    from plugin_server.engine import free_memory

    per_px = 4 * (6 + 4 * generator.config.full_channels)
    return image.shape[0] * image.shape[1] * per_px < 0.5 * free_memory(torch.device("cpu"))


def single_conv_peak_gflops(generator: Generator, device: str = "cpu") -> float:
    c = generator.config.body_channels
    conv = torch.nn.Conv2d(c, c, generator.config.kernel_size, padding=generator.config.kernel_size // 2).to(device)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.rand(1, c, 544, 544, device=device).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(7):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    flops = 2 * c * c * generator.config.kernel_size**2 * 544 * 544
    return flops / statistics.median(times[2:]) / 1e9


def compare_methods(image: np.ndarray, label: str, tmp: Path, generator: Generator) -> list[dict]:
    source = tmp / f"{label}.npy"
    np.save(source, image)
    rows, outputs = [], {}
    methods = ["engine", "monai"] + (["naive"] if fits_whole(image, generator) else [])
    methods += ["starter"] if checkpoint.BUNDLED.is_file() else []
    for method in methods:
        out = tmp / f"{label}-{method}.npy"
        row = {"image": label, "method": method, **child("worker", method, str(source), str(out))}
        if "seconds" in row:
            row["mp_per_s"] = image.shape[0] * image.shape[1] / 1e6 / row["seconds"]
            row["gflop_per_s"] = row["mp_per_s"] * 1e6 * generator.flops_per_pixel() / 1e9
            outputs[method] = out
        rows.append(row)
    reference = outputs.get("naive", outputs.get("engine"))
    whole = np.load(reference) if "naive" in outputs else retouch(image, generator, tile_size=0)
    for row in rows:
        if row["method"] in outputs and row["method"] != "starter":  # other weights: no reference
            row["max_diff_vs_whole"] = int(np.abs(np.load(outputs[row["method"]]).astype(int) - whole).max())
    return rows


def big_tiff_through_cli(tmp: Path, photo: np.ndarray) -> dict:
    """A 10000x10000 16-bit RGB TIFF (100 MP, 600 MB) through `autoretouch retouch`."""
    reps = (-(-10000 // photo.shape[0]), -(-10000 // photo.shape[1]), 1)
    big = np.tile(photo, reps)[:10000, :10000].astype(np.uint16) * 257
    src, dst, ckpt = tmp / "big.tif", tmp / "big-out.tif", tmp / "model.pt"
    imageio.write(src, imageio.Picture(big, "tiff"))
    del big
    checkpoint.save(ckpt, Model(model()))
    return child("cli", str(src), str(dst), str(ckpt), timeout=3600)


def cli_worker(src: str, dst: str, ckpt: str) -> None:
    from plugin_server.cli import main as cli_main

    start = time.perf_counter()
    code = cli_main(["retouch", src, dst, "--checkpoint", ckpt, "--no-faces"])  # the whole image, as before faces
    print(json.dumps({"exit": code, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}))


def gpu_roofline(image: np.ndarray, generator: Generator) -> dict:
    """24 MP bf16 on CUDA against the bf16 peak of a large matmul."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        a @ a
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = 2 * 8192**3 / statistics.median(times[3:]) / 1e12
    gpu = generator.to("cuda")
    retouch(image, gpu)  # warm-up: cuDNN picks algorithms
    runs = []
    for _ in range(REPEATS):
        torch.cuda.synchronize()
        start = time.perf_counter()
        retouch(image, gpu, device="cuda", precision="bf16")
        torch.cuda.synchronize()
        runs.append(time.perf_counter() - start)
    mpps = image.shape[0] * image.shape[1] / 1e6 / statistics.median(runs)
    achieved = mpps * 1e6 * generator.flops_per_pixel() / 1e12
    return {"mp_per_s": mpps, "tflop_per_s": achieved, "peak_tflop_per_s": peak, "fraction_of_peak": achieved / peak}


def main(argv: list[str] | None = None) -> dict:
    if not PORTRAIT.is_file():
        sys.exit(f"bench_engine: needs the real photos in {PORTRAIT.parent}")
    photo = imageio.read(PORTRAIT).pixels
    generator = model()
    report: dict = {"machine": machine(), "repeats": REPEATS, "flops_per_pixel": generator.flops_per_pixel()}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        rows = compare_methods(photo[2000:3414, 1300:2714].copy(), "2MP", tmp, generator)
        rows += compare_methods(photo, "24MP", tmp, generator)
        report["rows"] = rows
        report["single_conv_peak_gflop_per_s"] = single_conv_peak_gflops(generator)
        report["tiff_100mp_cli"] = big_tiff_through_cli(tmp, photo)
    report["gpu"] = gpu_roofline(photo, generator) if torch.cuda.is_available() else "no CUDA device on this machine"
    print_report(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(report, indent=2))
    return report


def print_report(report: dict) -> None:
    print(f"engine benchmark on {report['machine']} (median of {report['repeats']})")
    print(f"{'image':6} {'method':8} {'MP/s':>7} {'GFLOP/s':>8} {'max diff':>9} {'peak RSS MB':>12}")
    for r in report["rows"]:
        if "error" in r:
            print(f"{r['image']:6} {r['method']:8} failed: {r['error']}")
            continue
        print(f"{r['image']:6} {r['method']:8} {r['mp_per_s']:7.2f} {r['gflop_per_s']:8.1f} "
              f"{r.get('max_diff_vs_whole', '-'):>9} {r['peak_rss_mb']:12.0f}")
    peak = report["single_conv_peak_gflop_per_s"]
    for r in report["rows"]:
        if r["method"] == "engine" and "gflop_per_s" in r:
            print(f"{r['image']} engine: {r['gflop_per_s'] / peak:.0%} of the single-conv peak ({peak:.1f} GFLOP/s)")
        if r["method"] == "monai" and "mp_per_s" in r:
            engine = next(e for e in report["rows"] if e["image"] == r["image"] and e["method"] == "engine")
            print(f"{r['image']} engine / MONAI speed: {engine['mp_per_s'] / r['mp_per_s']:.2f}x")
    print(f"100 MP 16-bit TIFF via CLI: {report['tiff_100mp_cli']}")
    print(f"GPU: {report['gpu']}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "cli":
        cli_worker(*sys.argv[2:5])
    else:
        main()
