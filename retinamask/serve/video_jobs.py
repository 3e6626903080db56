"""Uploaded clips as jobs: each job is ``predict``'s video job (:func:`~retinamask.apps.predict_videos.predict_videos`)
over one uploaded file, into the job's own folder under ``--jobs-dir``, with a ``predict`` that goes
through the server's batcher and sessions (the same queue as ``/v1/predict``).

Decisions:

* Layout: ``{jobs_dir}/{id}/job.json`` (the job's record, written atomically at each change of state),
  ``upload{.ext}`` (the clip as sent; removed when the job ends), and predict's outputs ``video.mp4``,
  ``video.jsonl``, ``results_ytvis.json`` (with tracking) and ``videos.json``.
* States: queued -> running -> done | failed | cancelled. ``--max-jobs`` jobs run at once (one thread
  each); at most ``--max-queued-jobs`` wait (503 beyond). A job has at most one frame in the batcher's
  queue at a time, so a ``/v1/predict`` request waits behind at most ``--max-jobs`` frames: jobs share
  the sessions with images, they never take them over. A job's own threads (decoding, mask pasting,
  drawing, encoding the MP4) run at a lower CPU priority (nice +10, Linux; threads inherit it), so that
  on a few cores an image's decode, pre- and post-processing go first.
* A restart keeps finished jobs; a job found running was interrupted (the server stopped or died): it
  is reported failed (its files hold the frames done, valid); a job found queued is queued again.
* SIGTERM: running jobs stop after their current frame, their MP4 closed (playable) and their JSONL
  complete lines, then they are marked failed ("interrupted").
* Expiry: a job that ended more than ``--jobs-ttl`` seconds ago is removed (checked at start and then
  every ``min(ttl / 4, 60)`` s).
* Cancel: ``DELETE`` on a queued or running job stops it (state cancelled, the frames done kept);
  ``DELETE`` on an ended job removes it.
"""

import logging
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from retinamask.apps.predict_sources import Source
from retinamask.apps.predict_video import FrameOptions
from retinamask.apps.predict_videos import YTVIS_FILE, VideoJobOptions, predict_videos
from retinamask.core.errors import ConfigError
from retinamask.serve.batcher import Draining, QueueFull
from retinamask.serve.errors import ServeError
from retinamask.serve.video_job import (
    ENDED,
    INTERRUPTED,
    JOB_FILE,
    STATES,
    STEM,
    Job,
    JobFailed,
    JobStopped,
    read_record,
    remove_upload,
)

log = logging.getLogger(__name__)


class VideoJobs:
    """The jobs of one server: created by the routes, run by ``max_jobs`` threads through ``batcher``."""

    def __init__(self, settings, model, metrics=None, log_line=log.info):
        self.settings = settings
        self.model = model
        self.metrics = metrics
        self._log = log_line
        self._temporary = None
        if settings.jobs_dir is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="retinamask-jobs-")
            self.root = Path(self._temporary.name)
        else:
            self.root = Path(settings.jobs_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._folder_lock = _lock_folder(self.root) if self._temporary is None else None
        self._jobs = {}
        self._lock = threading.Lock()
        self._queue = queue.Queue()
        self._threads = []
        self._stopping = threading.Event()
        self.batcher = None

    # ---- lifecycle

    def start(self, batcher):
        """Read the jobs on disk (recover), expire the old ones, start the job threads and the sweeper."""
        self.batcher = batcher
        self._recover()
        self.sweep()
        for i in range(self.settings.max_jobs):
            thread = threading.Thread(target=self._work, name=f"retinamask-video-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        sweeper = threading.Thread(target=self._sweep_loop, name="retinamask-video-expiry", daemon=True)
        sweeper.start()
        self._threads.append(sweeper)
        where = "a temporary folder (jobs end with the server; --jobs-dir keeps them)" if self._temporary else self.root
        self._log(f"video jobs in {where}: {self.settings.max_jobs} at once, kept {self.settings.jobs_ttl:g} s")

    def stop(self, timeout=None):
        """Stop the running jobs after their current frame (their files closed, valid), mark them failed
        (interrupted); queued jobs stay queued on disk for the next start."""
        self._stopping.set()
        with self._lock:
            running = [job for job in self._jobs.values() if job.state == "running"]
        for job in running:
            job.stop_reason = "interrupted"
            job.stop.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.1))
        if self._temporary is not None:
            self._temporary.cleanup()
        if self._folder_lock is not None:
            self._folder_lock.close()  # the lock goes with it
            self._folder_lock = None

    def _recover(self):
        for folder in sorted(self.root.iterdir()):
            record = read_record(folder / JOB_FILE)
            if record is None:
                continue
            job = Job(folder, record)
            if record["state"] == "running":
                record.update(state="failed", error=INTERRUPTED, finished=record.get("finished") or time.time())
                job.ended.set()
                job.save()
                remove_upload(job)
            self._jobs[job.id] = job
            if record["state"] == "queued":
                self._queue.put(job.id)
        self._count()

    # ---- the routes' side

    def check_room(self):
        """503 when ``--max-queued-jobs`` jobs wait already."""
        with self._lock:
            waiting = sum(job.state == "queued" for job in self._jobs.values())
        if waiting >= self.settings.max_queued_jobs:
            raise ServeError(
                503,
                "jobs_full",
                f"{waiting} video jobs are waiting already (--max-queued-jobs {self.settings.max_queued_jobs}); "
                "retry later",
                {"Retry-After": "5"},
            )

    def new_folder(self):
        """A new job's id and its (empty) folder, for the upload to be written into."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder

    def create(self, job_id, folder, upload_name, source, options):
        """Queue the job whose upload is in ``folder``; returns the Job."""
        total = None
        if source.frames:
            total = -(-source.frames // options.vid_stride)
        record = {
            "id": job_id,
            "state": "queued",
            "created": time.time(),
            "upload": upload_name,
            "options": asdict(options),
            "source": asdict(source),
            "frames_total": total,
            "frames_done": 0,
        }
        job = Job(folder, record)
        job.save()
        with self._lock:
            self._jobs[job_id] = job
        self._count()
        self._queue.put(job_id)
        return job

    def get(self, job_id):
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise ServeError(404, "no_such_job", f"no video job {job_id!r} (never made, removed or expired)")
        return job

    def delete(self, job_id, wait=30.0):
        """Cancel a queued or running job (returns it, cancelled); remove an ended one (returns None)."""
        job = self.get(job_id)
        with self._lock:
            if job.state == "queued":
                job.record.update(state="cancelled", finished=time.time(), error="cancelled before it started")
                job.stop_reason = "cancelled"
                job.stop.set()
                job.ended.set()
                job.save()
                remove_upload(job)
                self._count_locked()
                return job
            if job.state == "running":
                job.stop_reason = "cancelled"
                job.stop.set()
        if not job.ended.is_set():
            job.ended.wait(wait)
            return job
        self._remove(job)
        return None

    def _remove(self, job):
        with self._lock:
            self._jobs.pop(job.id, None)
            self._count_locked()
        shutil.rmtree(job.folder, ignore_errors=True)

    def sweep(self, now=None):
        """Remove the jobs that ended more than ``jobs_ttl`` seconds ago; returns their ids."""
        now = time.time() if now is None else now
        with self._lock:
            old = [
                job
                for job in self._jobs.values()
                if job.state in ENDED and now - (job.record.get("finished") or now) > self.settings.jobs_ttl
            ]
        for job in old:
            self._remove(job)
        return [job.id for job in old]

    def _sweep_loop(self):
        period = min(self.settings.jobs_ttl / 4, 60.0)
        while not self._stopping.wait(period):
            try:
                self.sweep()
            except Exception:
                log.exception("removing expired video jobs failed")

    # ---- the job threads

    def _work(self):
        lower_priority()
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping.is_set():
                return
            with self._lock:
                job = self._jobs.get(job_id)
                if job is None or job.state != "queued":
                    continue
                job.record.update(state="running", started=time.time())
                self._count_locked()
            job.save()
            try:
                self._run(job)
            except Exception:
                log.exception("video job %s failed unexpectedly", job.id)
                job.record.update(state="failed", error="internal error (the server log has details)")
            job.record["finished"] = time.time()
            job.save()
            remove_upload(job)
            job.ended.set()
            self._count()
            self._log(f"video job {job.id}: {job.state}, {job.frames_done} frames")

    def _run(self, job):
        opts = job.record["options"]
        frames = FrameOptions(vid_stride=int(opts["vid_stride"]), duration=self.settings.max_video_seconds)
        options = VideoJobOptions(
            frames=frames,
            track=bool(opts["track"]),
            annotated=bool(opts.get("video", True)),  # a job recorded before the option was: with its MP4
            score_threshold=float(opts["score_threshold"]),
            save_ytvis=bool(opts["track"]),
            category_ids=tuple(self.model.category_ids),
        )
        source = Source("video", str(job.upload), STEM)
        try:
            summary = predict_videos(self._predict_for(job), [source], job.folder, options, progress=False)
        except JobFailed as e:
            job.record.update(state="failed", error=str(e))
            return
        except JobStopped:
            if job.stop_reason == "cancelled":
                job.record.update(state="cancelled", error="cancelled (the frames done are kept)")
            else:
                job.record.update(state="failed", error=INTERRUPTED)
            return
        if summary["failed"]:
            job.record.update(state="failed", error=summary["failed"][0]["cause"])
        else:
            job.record["state"] = "done"
            job.record["frames_total"] = job.frames_done

    def _predict_for(self, job):
        """``rgb -> Detections`` through the server's queue and sessions (the predictor's own code:
        ``prepare``, a session's ``run``, ``finish`` with pasted masks, as ``predict`` runs it)."""
        model, metrics = self.model, self.metrics

        def predict(rgb):
            if job.stop.is_set():
                raise JobStopped(job.stop_reason)
            prepared = model.prepare(rgb)
            item = self._submit(job, prepared)
            while True:
                try:
                    outputs = item.future.result(timeout=0.5)
                    break
                except TimeoutError:
                    continue
                except Exception as e:  # its traceback is in the log (batcher)
                    raise JobFailed(f"inference failed ({type(e).__name__}): {e}") from None
            detections = model.finish(outputs, prepared, True)
            job.frames_done += 1
            if metrics is not None:
                metrics.frames.labels("job").inc()
            return detections

        return predict

    def _submit(self, job, prepared):
        while True:
            if job.stop.is_set():
                raise JobStopped(job.stop_reason)
            try:
                return self.batcher.submit(prepared, prepared.canvas_hw)
            except QueueFull:  # images fill the queue: they go first, the job waits its turn
                time.sleep(0.02)
            except Draining:
                job.stop_reason = job.stop_reason or "interrupted"
                raise JobStopped(job.stop_reason) from None

    # ---- metrics

    def _count(self):
        with self._lock:
            self._count_locked()

    def _count_locked(self):
        if self.metrics is None:
            return
        counts = dict.fromkeys(STATES, 0)
        for job in self._jobs.values():
            counts[job.state] += 1
        for state, count in counts.items():
            self.metrics.jobs.labels(state).set(count)

    def ytvis_path(self, job):
        return job.path(YTVIS_FILE)


JOB_NICE = 10


def lower_priority(nice=JOB_NICE):
    """Lower the calling thread's CPU priority by ``nice`` (Linux: per thread, inherited by the threads it
    starts); elsewhere nothing. Returns True when done."""
    import os

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
    except (AttributeError, OSError):
        return False
    return True


def _lock_folder(root):
    """An exclusive lock on ``root/.lock`` while this server runs (POSIX ``flock``; elsewhere none): a second
    server on the same folder would take the first one's running jobs for interrupted ones."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(root / ".lock", "w")  # noqa: SIM115 (held open: the lock lives as long as the file)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            "another server uses this --jobs-dir (it holds .lock): give each server its own", root
        ) from None
    return handle
