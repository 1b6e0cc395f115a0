"""The settings value every part of the server reads, and its job limits.

Kept free of torch and aiohttp, like the wire contract its defaults come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BadConfigError
from ..wire import DEFAULT_HOST, DEFAULT_MAX_PIXELS, DEFAULT_PORT, RetouchOptions


@dataclass(frozen=True)
class JobLimits:
    """How much work the server accepts and how long it keeps what nobody collects."""

    queue_size: int = 8  # jobs waiting (not running) before 503 Busy
    result_ttl: float = 600.0  # seconds a finished job (and its result) is kept
    result_memory: int = 2 << 30  # bytes of finished results kept; oldest go first
    max_finished: int = 1000  # finished job records kept, whatever their size
    idle_timeout: float = 120.0  # a queued/running job nobody polled for this long is cancelled

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise BadConfigError(f"the queue size must be at least 1, got {self.queue_size}")
        for name in ("result_ttl", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise BadConfigError(f"the {name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if self.result_memory < 0 or self.max_finished < 1:
            raise BadConfigError("the result memory must be >= 0 and the finished jobs kept >= 1")


@dataclass(frozen=True)
class ServerSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    devices: tuple[str, ...] = ("cpu",)  # resolved names, one worker each
    engine: RetouchOptions = RetouchOptions()  # tile size and precision of every job; strength per request
    max_pixels: int = DEFAULT_MAX_PIXELS
    token: str | None = None
    limits: JobLimits = field(default_factory=JobLimits)
    stall_seconds: float = 30.0  # a request body that sends nothing for this long is given up

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise BadConfigError(f"the largest image must be at least 1 pixel, got {self.max_pixels}")
        if not self.stall_seconds > 0:
            raise BadConfigError(f"the body timeout must be positive, got {self.stall_seconds}")
