"""Where and in what precision a network runs: the one resolver for the engine, server and trainer.

    device = resolve_device("auto")                       # cuda if present, else cpu
    precision = resolve_precision(None, device, safe=("fp32", "bf16"))   # "bf16" on CUDA
    dtype = DTYPES[precision]
"""

from __future__ import annotations

import torch

from .errors import BadOptionError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or "auto": the first CUDA device if there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BadOptionError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type not in ("cpu", "cuda"):
        raise BadOptionError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadOptionError(f"device {device!r} was asked for, but CUDA is not available here; run on the CPU instead")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadOptionError(
                f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return dev


def resolve_precision(precision: str | None, device: torch.device, safe: tuple[str, ...] = ("fp32",)) -> str:
    """The precision to run in: the one asked for, else bf16 on CUDA when ``safe`` allows it, else fp32.

    ``safe`` is what the network declares it is accurate in; asking for another is refused.
    """
    if precision in (None, "auto"):
        return "bf16" if device.type == "cuda" and "bf16" in safe else "fp32"
    if precision not in DTYPES:
        raise BadOptionError(f"unknown precision {precision!r}; use one of {', '.join(DTYPES)}")
    if precision not in safe:
        raise BadOptionError(
            f"this model is not accurate in {precision}; it declares {', '.join(safe)} as safe"
        )
    return precision
