"""One video job of the service: its options, what its upload holds (probed before it is accepted), its
record ``job.json`` and its files (``serve.video_jobs`` runs the jobs; the layout is described there)."""

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from retinamask.core.errors import InputError
from retinamask.core.fileio import atomic_write_json
from retinamask.formats.video_read import open_video
from retinamask.serve.errors import ServeError

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
STEM = "video"  # the outputs: video.mp4, video.jsonl
STATES = ("queued", "running", "done", "failed", "cancelled")
ENDED = ("done", "failed", "cancelled")
INTERRUPTED = "interrupted: the server stopped while the job ran (the frames done are kept)"


class JobFailed(Exception):
    """Raised inside a job's ``predict`` when the runtime fails on its frame: the job ends failed."""


class JobStopped(Exception):
    """Raised inside a job's ``predict`` to stop it (cancelled, or the server stopping)."""


@dataclass(frozen=True)
class JobOptions:
    """A job's query options, as ``predict`` has them: tracking (on by default for jobs: the page shows
    track ids and results_ytvis.json needs tracks), the overlay's score threshold, one frame in vid_stride,
    and the annotated MP4 (``video``; False: results only, as ``predict --no-video``)."""

    track: bool = True
    score_threshold: float = 0.3
    vid_stride: int = 1
    video: bool = True


@dataclass(frozen=True)
class SourceInfo:
    """What the upload holds (probed before the job is accepted)."""

    name: str
    width: int
    height: int
    frames: int | None
    duration: float | None
    frame_rate: float | None
    codec: str
    has_audio: bool


def probe_upload(path, name, max_seconds, max_pixels):
    """The upload's :class:`SourceInfo`; ServeError 415 (not a video), 422 (too long, frames too large)."""
    try:
        with open_video(path, timeout=10.0, reconnect=0) as reader:
            info = reader.info
    except InputError as e:
        raise ServeError(415, "not_a_video", f"not a video FFmpeg can read: {e.cause}") from None
    rate = float(info.frame_rate) if info.frame_rate else None
    duration = info.duration
    if duration is None and info.frames and rate:
        duration = info.frames / rate
    if info.width * info.height > max_pixels:
        raise ServeError(
            422,
            "bad_video",
            f"frames of {info.width}x{info.height} pixels exceed --max-pixels {max_pixels}",
        )
    if duration is not None and duration > max_seconds:
        raise ServeError(
            422, "video_too_long", f"the video lasts {duration:.1f} s, more than --max-video-seconds {max_seconds:g}"
        )
    return SourceInfo(name, info.width, info.height, info.frames, duration, rate, info.codec, bool(info.has_audio))


class Job:
    """One job: its folder, its record (``job.json``) and, while it runs, its progress."""

    def __init__(self, folder, record):
        self.folder = Path(folder)
        self.record = record
        self.stop = threading.Event()
        self.stop_reason = None
        self.frames_done = int(record.get("frames_done", 0))
        self.ended = threading.Event()
        if record["state"] in ENDED:
            self.ended.set()

    @property
    def id(self):
        return self.record["id"]

    @property
    def state(self):
        return self.record["state"]

    @property
    def upload(self):
        return self.folder / self.record["upload"]

    def path(self, name):
        return self.folder / name

    def save(self):
        self.record["frames_done"] = self.frames_done
        atomic_write_json(self.folder / JOB_FILE, self.record)

    def status(self, now=None):
        """The ``GET /v1/videos/{id}`` answer (without its URLs)."""
        now = time.time() if now is None else now
        record = self.record
        total = record.get("frames_total")
        started, finished = record.get("started"), record.get("finished")
        seconds = ((finished or now) - started) if started else None
        fps = self.frames_done / seconds if seconds and self.frames_done else None
        eta = None
        if record["state"] == "running" and fps and total is not None:
            eta = round(max(total - self.frames_done, 0) / fps, 1)
        elif record["state"] == "done":
            eta = 0.0
        return {
            "id": record["id"],
            "state": record["state"],
            "frames_done": self.frames_done,
            "frames_total": total,
            "fps": round(fps, 2) if fps else None,
            "eta_s": eta,
            "error": record.get("error"),
            "created": record["created"],
            "started": started,
            "finished": finished,
            "options": record["options"],
            "source": record["source"],
        }


def read_record(path):
    import json

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("state") not in STATES or "id" not in record:
        return None
    return record


def remove_upload(job):
    try:
        job.upload.unlink(missing_ok=True)
    except OSError:
        log.warning("%s: cannot remove the upload", job.upload)
