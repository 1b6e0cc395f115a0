"""The training loop: read it top to bottom.

One process, on the CPU or one GPU::

    autoretouch-train train --data data/ffhqr --out runs/paper --vgg-weights vgg19.pth

Several GPUs (or CPU processes, with gloo) on one machine, through torchrun::

    torchrun --standalone --nproc_per_node 8 -m training.cli train --data data/ffhqr --out runs/paper ...

Each rank trains on its own share of every epoch; DistributedDataParallel averages the
gradients, so all ranks hold the same weights. Only rank 0 writes logs and checkpoints.
Re-running the same command with ``--resume`` continues exactly where ``last.pt`` left off:
``RunState`` (epoch, batch, step, best, RNG states, ...) is the checkpoint, and the loop below
advances it in place.
"""

from __future__ import annotations

import gc
import json
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from plugin_server.checkpoint import Model
from plugin_server.devices import DTYPES, resolve_device, resolve_precision
from plugin_server.errors import BadOptionError, DataError, ResumeError
from plugin_server.model import Generator

from .config import TrainConfig
from .evaluate import evaluate
from .face_scale import FACES_FILE, FaceScaledPairs, measure_iods, read_iods, write_iods
from .pairs import list_pairs
from .report import JsonlLog, Progress, plot_losses, save_grid
from .state import RunState, capture_rng, load_any_generator, load_training, restore_rng, save_training
from .step import Models, build_models, train_step
from .vgg import load_vgg19_features
from .windows import FilePairs, PairSource, WindowDataset, WindowSpec, collate_windows, epoch_batches

GRID_IMAGES = 3
# Training runs under autocast over fp32 weights, where bf16 is safe for any generator.
TRAIN_PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainResult:
    generator: Generator  # the unwrapped generator, on the training device
    epoch: int  # epochs completed
    step: int
    metrics: dict[str, float]
    run_dir: Path


def train(config: TrainConfig, run_dir: Path, resume: bool = False, command: str = "") -> TrainResult:
    # --- distributed set-up: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain run has no RANK
    device = resolve_device(config.device)
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process
            torch.cuda.set_device(device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    try:
        result = _train(config, Path(run_dir), resume, command, device, rank, world)
        if ddp:
            # Every rank finishes before any tears gloo down, and the DDP wrappers (which hold
            # the process group and sit in reference cycles) go before it does: either, left
            # to interpreter exit, could abort the process after a successful run.
            dist.barrier()
            gc.collect()
        return result
    finally:
        if ddp:
            dist.destroy_process_group()


def _train(
    config: TrainConfig, run_dir: Path, resume: bool, command: str, device: torch.device, rank: int, world: int
) -> TrainResult:
    ddp, master = dist.is_initialized(), rank == 0  # only rank 0 writes logs and checkpoints
    if not resume and (run_dir / "last.pt").exists():  # a new run would overwrite hours of training
        raise ResumeError(f"{run_dir} already holds a run (last.pt): add --resume to continue it, or give another --out")
    # Resuming, the hyperparameters come from the checkpoint; the command line only changes run fields.
    state = _resumed(config, run_dir) if resume else RunState(config)
    config, state.command = state.config, command

    progress = Progress(0)  # its total is known once the data is
    dataset, val_source, left_out = _datasets(config, run_dir, rank, world, progress.message if master else None)
    steps_per_epoch = len(epoch_batches(len(dataset), config.batch_size, 0, config.seed, rank, world))
    precision = resolve_precision(config.precision, device, safe=TRAIN_PRECISIONS)
    m = _models(config, device, DTYPES[precision] if precision != "fp32" else None, state if resume else None, rank, world)

    log = JsonlLog(run_dir / "log.jsonl")
    progress.total = steps_per_epoch * config.epochs
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        progress.message(
            f"{len(dataset)} training pairs, {len(val_source)} validation pairs, {world} process(es) on {device}, "
            f"{precision}, {steps_per_epoch} steps per epoch" + (f", resuming at step {state.step}" if resume else "")
            + (f", faces resampled to an IOD of {config.face_scale:g} px" if config.face_scale else "")
        )
        if left_out:
            log.write({"kind": "left_out", "count": len(left_out), "files": [{"name": n, "why": why} for n, why in left_out]})
            shown = ", ".join(f"{n} ({why})" for n, why in left_out[:5]) + (", ..." if len(left_out) > 5 else "")
            progress.message(f"left out {len(left_out)} pair(s) with no face to scale by (see log.jsonl): {shown}")

    # --- the loop ---------------------------------------------------------------------------
    stopped = False
    t0, samples_since = time.perf_counter(), 0
    while state.epoch < config.epochs and not stopped:
        plan = epoch_batches(len(dataset), config.batch_size, state.epoch, config.seed, rank, world)[state.batch:]
        loader = DataLoader(
            dataset, batch_sampler=plan, collate_fn=collate_windows,
            num_workers=config.workers, pin_memory=device.type == "cuda",
        )
        skipped: list[str] = []  # bad pairs met in this epoch on this rank
        for before, after, bad in loader:
            skipped += bad
            before = before.to(device, non_blocking=True)
            after = after.to(device, non_blocking=True)
            losses = train_step(m, before, after, _gather if ddp else None)
            state.step, state.batch = state.step + 1, state.batch + 1
            samples_since += len(before) * world
            if master and (state.step % config.log_every == 0 or state.batch == steps_per_epoch):
                rate = samples_since / (time.perf_counter() - t0)
                values = {k: float(v) for k, v in losses.items()}
                log.write({"kind": "train", "epoch": state.epoch, "step": state.step, "losses": values, "samples_per_s": rate})
                progress.update(state.step, state.epoch, values, rate, state.skipped + len(skipped))
                t0, samples_since = time.perf_counter(), 0
            stopped = bool(config.stop_after_steps) and state.step >= config.stop_after_steps
            if stopped or (config.checkpoint_every and state.step % config.checkpoint_every == 0):
                _checkpoint(state, m, run_dir, master)
            if stopped:
                break
        if stopped:
            break
        state.epoch, state.batch = state.epoch + 1, 0

        # --- end of epoch: bad files, validation, checkpoints -----------------------------
        skipped = [name for names in _gather_objects(skipped) for name in names]
        state.skipped += len(skipped)
        if master and skipped:
            names = sorted(set(skipped))
            log.write({"kind": "skipped", "epoch": state.epoch - 1, "count": len(skipped), "files": names})
            progress.message(f"epoch {state.epoch - 1}: skipped {len(skipped)} unreadable or mismatched pair(s): {', '.join(names[:5])}")
        improved = False
        if master and len(val_source) and config.val_every and (state.epoch % config.val_every == 0 or state.epoch == config.epochs):
            state.metrics = _validate(m, val_source, config, device, run_dir, state, log, progress)
            improved, state.best = state.metrics["psnr"] > state.best, max(state.best, state.metrics["psnr"])
        _checkpoint(state, m, run_dir, master, improved)
        t0, samples_since = time.perf_counter(), 0  # throughput counts training time only

    if master:
        progress.message(f"stopped at step {state.step} (epoch {state.epoch}); checkpoint {run_dir / 'last.pt'}")
        if (stopped or not len(val_source) or not config.val_every) and log.read():  # else the last validation just plotted
            plot_losses(log.path, run_dir / "loss.png")
    return TrainResult(m.raw_generator, state.epoch, state.step, state.metrics, run_dir)


def _datasets(
    config: TrainConfig, run_dir: Path, rank: int, world: int, note: Callable[[str], None] | None = None
) -> tuple[WindowDataset, PairSource, list[tuple[str, str]]]:
    """Random training windows, whole validation pairs, and the pairs left out (name, why)."""
    root, split_args = Path(config.data), dict(val_fraction=config.val_fraction, test_fraction=config.test_fraction)
    train_listing = list_pairs(root, config.layout, "train", **split_args)
    if not train_listing.pairs:
        raise DataError(f"no training pairs found in {root} (run `autoretouch-train check --data {root}`)")
    val_listing = list_pairs(root, config.layout, "val", **split_args)
    train_source: PairSource = FilePairs(train_listing)
    val_source: PairSource = FilePairs(val_listing)
    left_out: list[tuple[str, str]] = []
    if config.face_scale:
        if config.val_images:  # validation reads only the first ones: detect faces there only
            val_source = FilePairs(replace(val_listing, pairs=val_listing.pairs[: config.val_images]))
        iods = _face_iods([train_source, val_source], run_dir, rank, world, note)
        train_source = FaceScaledPairs(train_source, config.face_scale, iods)
        val_source = FaceScaledPairs(val_source, config.face_scale, iods)
        left_out = train_source.left_out + val_source.left_out
        if not len(train_source):
            raise DataError(f"no face found in any training pair of {root}: --face-scale needs portraits")
    focus = config.focus if config.focus != "auto" else ("center" if train_listing.aligned else "edits")
    spec = WindowSpec(config.window, focus, config.background_prob, config.mirror, config.colour_jitter, config.rotate)
    return WindowDataset(train_source, spec, seed=config.seed), val_source, left_out


def _face_iods(
    sources: list[PairSource], run_dir: Path, rank: int, world: int, note: Callable[[str], None] | None
) -> dict[str, float | str]:
    """Every pair's face IOD, the same on every rank: what ``faces.json`` holds, and the rest
    measured once, each rank a share, then gathered (face finding is 0.1-1 s a photo)."""
    cache = run_dir / FACES_FILE
    iods = read_iods(cache)
    todo = [(source, i) for source in sources for i in range(len(source)) if source.name(i) not in iods]
    if todo and note:  # this can take a while on a large data set: say what is happening
        note(f"finding the faces of {len(todo)} pairs on {world} process(es), once (kept in {cache})")
    mine: dict[str, float | str] = {}
    for source, index in todo[rank::world]:
        mine |= measure_iods(source, [index])
    for share in _gather_objects(mine):
        iods |= share
    if todo and rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_iods(cache, iods)
    return iods


def _models(
    config: TrainConfig, device: torch.device, autocast: torch.dtype | None, resumed: RunState | None, rank: int, world: int
) -> Models:
    """The run's models: fresh (the same seed on every rank gives the same weights), fine-tuned or resumed."""
    vgg = load_vgg19_features(config.vgg_weights, config.perceptual_layer) if config.uses_perceptual else None
    torch.manual_seed(config.seed)  # right before the generator: its initial weights depend on the seed only
    m = build_models(config, device, vgg, autocast)
    # Per-rank seeds for anything random outside the data windows (which are keyed by index).
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)
    if resumed is not None:
        m.load_state_dict(resumed.weights)
        if len(resumed.rng) == world:  # the same number of processes: each continues its own streams
            restore_rng(resumed.rng[rank])
    elif config.init:
        _init_generator(m.raw_generator, config.init)
    if dist.is_initialized():
        ids = [device.index] if device.type == "cuda" else None
        m.generator = DDP(m.raw_generator, device_ids=ids)
        if m.raw_discriminator is not None:
            m.discriminator = DDP(m.raw_discriminator, device_ids=ids)
    return m


def _resumed(config: TrainConfig, run_dir: Path) -> RunState:
    """The run saved in RUN_DIR/last.pt, taking only the run-only fields (e.g. more epochs) from ``config``."""
    path = run_dir / "last.pt"
    try:
        state = RunState.from_payload(load_training(path))
    except Exception as exc:
        raise ResumeError(f"--resume: cannot continue from {path}: {exc}") from exc
    if diff := state.config.differences(config):
        changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ResumeError(f"--resume with different hyperparameters ({changes}); start a new run instead")
    state.config = state.config.with_run_fields(config)
    return state


def _checkpoint(state: RunState, m: Models, run_dir: Path, master: bool, improved: bool = False) -> None:
    """Write last.pt (and best.pt when validation improved). Every rank calls it: gathering is collective."""
    state.rng = _gather_objects(capture_rng())  # every rank's RNG, so resume restores each
    if master:
        state.weights = m.state_dict()
        save_training(run_dir / "last.pt", state)
        if improved:
            save_training(run_dir / "best.pt", state)


def _gather(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (just ``[obj]`` without DDP)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _init_generator(generator: Generator, path: str) -> None:
    """Fine-tuning: start from a checkpoint's weights, which must fit this run's generator."""
    source = load_any_generator(path).generator
    if source.config != generator.config:
        raise BadOptionError(
            f"--init {path}: its generator is {source.config}, this run's is {generator.config}; "
            "give the same --full-channels, --body-channels, --blocks and --kernel-size"
        )
    generator.load_state_dict(source.state_dict())


def _validate(
    m: Models, source: PairSource, config: TrainConfig, device: torch.device, run_dir: Path,
    state: RunState, log: JsonlLog, progress: Progress,
) -> dict[str, float]:
    """Whole-image validation on rank 0, a grid of examples and the loss plot; returns the metrics."""
    result = evaluate(Model(m.raw_generator), source, device, limit=config.val_images, keep_samples=GRID_IMAGES)
    metrics = {**result.model, **{f"{k}_noedit": v for k, v in result.noedit.items()}, "images": result.images}
    log.write({"kind": "val", "epoch": state.epoch, "step": state.step, **metrics, "skipped": result.skipped})
    progress.message(
        f"validation after epoch {state.epoch}: PSNR {result.model['psnr']:.2f} dB (no edit {result.noedit['psnr']:.2f}), "
        f"SSIM {result.model['ssim']:.4f} (no edit {result.noedit['ssim']:.4f}) on {result.images} images"
    )
    if result.samples:
        save_grid(run_dir / f"grid-{state.epoch:04d}.png", result.samples)
    plot_losses(log.path, run_dir / "loss.png")
    return metrics
