"""Server defaults and the settings value every part of the server reads.

Kept free of torch and aiohttp so the client can import the default URL cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8377
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_MAX_PIXELS = 200_000_000
TOKEN_ENV = "AUTORETOUCH_TOKEN"


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
            raise ValueError(f"queue size must be at least 1, got {self.queue_size}")
        for name in ("result_ttl", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if self.result_memory < 0 or self.max_finished < 1:
            raise ValueError("result memory must be >= 0 and max finished jobs >= 1")


@dataclass(frozen=True)
class ServerSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    devices: tuple[str, ...] = ("cpu",)  # resolved names, one worker each
    precision: str | None = None  # None: the engine's default for the device
    tile_size: int | None = None  # None: the engine picks from free memory
    max_pixels: int = DEFAULT_MAX_PIXELS
    token: str | None = None
    limits: JobLimits = field(default_factory=JobLimits)


def max_body_bytes(max_pixels: int) -> int:
    """Largest request body worth reading: an uncompressed float RGBA image of max_pixels, plus metadata."""
    return max_pixels * 4 * 4 + (16 << 20)
