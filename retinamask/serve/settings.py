"""What a server is started with: the model, the runtime, the batching and the limits."""

import os
from dataclasses import dataclass
from pathlib import Path

from retinamask.core.contract import MASK_PASTE_CHOICES
from retinamask.core.errors import ConfigError

API_KEY_ENV = "RETINAMASK_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """model: an exported .onnx (None: the shipped model's ONNX). sessions: worker threads, each with its own
    session of ``threads`` intra-op threads (None: the usable CPUs divided among the sessions).
    max_batch / batch_wait_ms: dynamic batching (images of one canvas, at most max_batch, waiting at most
    batch_wait_ms for company). max_queue: images waiting for a session before 503. timeout_s: a request's
    whole budget before 504. max_image_mb: request body limit (413). max_pixels: decoded image limit (422).
    api_key: required as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on /v1/predict and /v1/models.
    mask_paste: "original" (the original's paste) or "subpixel" (sharper on small objects; ``ops.masks``).
    jobs_dir / jobs_ttl / max_jobs / max_queued_jobs / max_video_mb / max_video_seconds: the video jobs
    (``serve.video_jobs``): their folder (None: a temporary one), how long an ended job is kept (s), jobs
    running at once, jobs waiting (503 beyond), the upload limit (413) and the clip's length limit (422).
    grpc_port: also serve the Open Inference Protocol over gRPC on host:grpc_port (None: off; 0: a free port).
    """

    model: Path | None = None
    backend: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    sessions: int = 2  # measured on 2 cores: 2 sessions x 1 thread serve more than 1 x 2 (RESULTS.md)
    threads: int | None = None
    max_batch: int = 1
    batch_wait_ms: float = 2.0
    max_queue: int = 16
    timeout_s: float = 30.0
    max_image_mb: float = 16.0
    max_pixels: int = 40_000_000
    api_key: str | None = None
    mask_paste: str = "original"
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    jobs_dir: Path | None = None
    jobs_ttl: float = 86400.0
    max_jobs: int = 1
    max_queued_jobs: int = 16
    max_video_mb: float = 256.0
    max_video_seconds: float = 600.0

    def __post_init__(self):
        for name in ("sessions", "max_batch", "max_queue", "max_pixels", "max_jobs", "max_queued_jobs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "max_image_mb", "jobs_ttl", "max_video_mb", "max_video_seconds"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if float(self.batch_wait_ms) < 0:
            raise ConfigError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        if self.threads is not None and int(self.threads) < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.mask_paste not in MASK_PASTE_CHOICES:
            raise ConfigError(f"--mask-paste must be original or subpixel, got {self.mask_paste!r}")
        for name in ("port", "grpc_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= int(value) <= 65535:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0..65535, got {value}")

    @property
    def max_body_bytes(self):
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def max_video_bytes(self):
        return int(self.max_video_mb * 1024 * 1024)

    @property
    def session_threads(self):
        """Intra-op threads per session."""
        if self.threads is not None:
            return int(self.threads)
        from retinamask.core.jobs import usable_cpus

        return max(1, usable_cpus() // int(self.sessions))

    @staticmethod
    def api_key_from_env(value=None):
        """``value`` (the flag), else $RETINAMASK_API_KEY, else None (no key required)."""
        return value or os.environ.get(API_KEY_ENV) or None
