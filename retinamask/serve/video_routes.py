"""The video routes: clips as jobs (``/v1/videos``, :mod:`.video_jobs`) and the live camera over a
WebSocket (``/v1/stream``, :mod:`.stream_ws`).

* ``POST /v1/videos``: the clip as a multipart file (``video`` or ``file``) or a raw ``video/*`` (or
  ``application/octet-stream``) body, streamed to the job's folder (``--max-video-mb``: 413 while it
  arrives), probed (not a video: 415; longer than ``--max-video-seconds`` or frames over ``--max-pixels``:
  422) -> 202 with the job's id, status and URLs. Query: ``track``, ``score_threshold``, ``vid_stride``,
  ``video`` (0: results only, no annotated MP4).
* ``GET /v1/videos/{id}``: state, frames done / total, frames/s, ETA, the error when failed, URLs.
* ``GET /v1/videos/{id}/video``: the annotated MP4 (H.264, faststart), HTTP range requests (seekable);
  409 until the job has ended. ``/results.jsonl``: the per-frame lines done so far (complete lines);
  ``/results_ytvis.json``: YouTube-VIS results, once done (tracking on).
* ``DELETE /v1/videos/{id}``: cancels a queued or running job (200, its status), removes an ended one (204).

Every route takes the API key (header), as ``/v1/predict`` does.
"""

import contextlib
import re
import shutil

from fastapi import Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from retinamask.serve.errors import OrjsonResponse, ServeError
from retinamask.serve.pipeline import check_key, require_ready
from retinamask.serve.request import declared_length
from retinamask.serve.video_job import STEM, JobOptions, probe_upload

VIDEOS = "/v1/videos"
STREAM = "/v1/stream"
_JOB_PATH = re.compile(r"^/v1/videos/[^/]+(/video|/results\.jsonl|/results_ytvis\.json)?$")
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
_CHUNK_FLUSH = 1 << 20


def route_label(path):
    """The /metrics route of a video path (its template), else None."""
    if path == VIDEOS:
        return VIDEOS
    match = _JOB_PATH.match(path)
    if match:
        return VIDEOS + "/{id}" + (match.group(1) or "")
    return None


def add_routes(app, state):
    """The video routes of ``state`` (its ``videos``: a :class:`~.video_jobs.VideoJobs`) on ``app``."""
    settings = state.settings

    def key(request):
        check_key(settings.api_key, request.headers.get("authorization"), request.headers.get("x-api-key"))

    def urls(request, job_id):
        base = str(request.base_url).rstrip("/") + f"{VIDEOS}/{job_id}"
        out = {"status": base, "video": base + "/video", "results_jsonl": base + "/results.jsonl"}
        return out | {"results_ytvis": base + "/results_ytvis.json"}

    def answer(request, job, status=200):
        body = job.status() | {"urls": urls(request, job.id)}
        if not job.record["options"]["track"]:
            body["urls"].pop("results_ytvis")
        if not job.record["options"].get("video", True):
            body["urls"].pop("video")
        headers = {"Location": body["urls"]["status"]} if status == 202 else None
        return OrjsonResponse(body, status_code=status, headers=headers)

    @app.post(VIDEOS, status_code=202, summary="Upload a clip: a job that writes the annotated MP4 and the results")
    async def create(
        request: Request,
        track: bool = Query(True, description="track objects across frames (ids; results_ytvis.json)"),
        score_threshold: float = Query(0.3, ge=0.0, le=1.0, description="the overlay draws detections from this"),
        vid_stride: int = Query(1, ge=1, le=1000, description="process one frame in N"),
        video: bool = Query(True, description="write the annotated MP4 (0: results only, less CPU a frame)"),
    ):
        key(request)
        require_ready(state)
        jobs = state.videos
        jobs.check_room()
        job_id, folder = jobs.new_folder()
        try:
            name, upload = await _receive(request, folder, settings.max_video_bytes, settings.max_video_mb)
            source = await run_in_threadpool(
                probe_upload, folder / upload, name, settings.max_video_seconds, settings.max_pixels
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        options = JobOptions(track=track, score_threshold=score_threshold, vid_stride=vid_stride, video=video)
        job = jobs.create(job_id, folder, upload, source, options)
        return answer(request, job, 202)

    @app.get(VIDEOS + "/{job_id}", summary="A video job's state and progress")
    async def status(request: Request, job_id: str):
        key(request)
        return answer(request, state.videos.get(job_id))

    @app.delete(VIDEOS + "/{job_id}", summary="Cancel a queued or running job; remove an ended one")
    async def delete(request: Request, job_id: str):
        key(request)
        job = await run_in_threadpool(state.videos.delete, job_id)
        if job is None:
            return Response(status_code=204)
        return answer(request, job)

    @app.get(VIDEOS + "/{job_id}/video", summary="The annotated MP4 (H.264; range requests)")
    async def video(request: Request, job_id: str):
        key(request)
        job = state.videos.get(job_id)
        path = job.path(f"{STEM}.mp4")
        if not job.record["options"].get("video", True):
            raise ServeError(404, "no_video", "the job ran with video=0 (results only): it has no video")
        if not job.ended.is_set():
            raise ServeError(409, "job_not_ended", f"the job is {job.state}: its video is written when it ends")
        if not path.is_file():
            raise ServeError(404, "no_video", f"the job {job.state} without a frame done: there is no video")
        return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4", content_disposition_type="inline")

    @app.get(VIDEOS + "/{job_id}/results.jsonl", summary="One JSON line per frame done (predict's video JSONL)")
    async def results_jsonl(request: Request, job_id: str):
        key(request)
        job = state.videos.get(job_id)
        data = await run_in_threadpool(_complete_lines, job.path(f"{STEM}.jsonl"))
        return Response(data, media_type="application/x-ndjson", headers={"X-Job-State": job.state})

    @app.get(VIDEOS + "/{job_id}/results_ytvis.json", summary="YouTube-VIS results (tracking on), once done")
    async def results_ytvis(request: Request, job_id: str):
        key(request)
        job = state.videos.get(job_id)
        if not job.record["options"]["track"]:
            raise ServeError(404, "no_tracks", "the job ran with track=0: YouTube-VIS results need tracks")
        path = state.videos.ytvis_path(job)
        if job.state != "done" or not path.is_file():
            raise ServeError(
                409, "job_not_done", f"the job is {job.state}: its YouTube-VIS results come when it is done"
            )
        return FileResponse(path, media_type="application/json")


def _complete_lines(path):
    with contextlib.suppress(FileNotFoundError):
        data = path.read_bytes()
        return data[: data.rfind(b"\n") + 1]
    return b""


async def _receive(request, folder, limit, limit_mb):
    """The clip of a POST into ``folder`` -> (its name as sent, the file name in the folder)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(declared, limit_mb)
    if content_type == "multipart/form-data":
        return await _multipart(request, folder, limit, limit_mb)
    if content_type.startswith("video/") or content_type == "application/octet-stream":
        name = request.headers.get("x-filename") or "upload"
        upload = "upload" + _suffix(name)
        await _stream_to(request.stream(), folder / upload, limit, limit_mb)
        return name, upload
    raise ServeError(
        415,
        "unsupported_media_type",
        f"Content-Type {content_type or '(none)'} is not accepted: send the clip as multipart/form-data "
        "(field 'video' or 'file') or as a raw video/* body",
    )


async def _multipart(request, folder, limit, limit_mb):
    from starlette.requests import Request as StarletteRequest

    size = 0
    stream = request.stream()

    async def receive():
        nonlocal size
        try:
            chunk = await stream.__anext__()
        except StopAsyncIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit_mb, at_least=True)
        return {"type": "http.request", "body": chunk, "more_body": True}

    try:
        form = await StarletteRequest(request.scope, receive).form(max_files=1, max_fields=16)
    except ServeError:
        raise
    except Exception as e:  # python-multipart's parse errors
        raise ServeError(422, "bad_multipart", f"cannot parse the multipart body: {e}") from None
    try:
        part = form.get("video") or form.get("file")
        if part is None or isinstance(part, str):
            raise ServeError(422, "missing_video", "the multipart body has no file field named 'video' or 'file'")
        name = part.filename or "upload"
        upload = "upload" + _suffix(name)
        await run_in_threadpool(_copy, part.file, folder / upload)
        return name, upload
    finally:
        await form.close()


def _copy(source, path):
    source.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK_FLUSH)


async def _stream_to(chunks, path, limit, limit_mb):
    size = pending = 0
    buffered = []
    with open(path, "wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit_mb, at_least=True)
            buffered.append(chunk)
            pending += len(chunk)
            if pending >= _CHUNK_FLUSH:  # written in 1 MB pieces, off the event loop
                await run_in_threadpool(out.write, b"".join(buffered))
                buffered, pending = [], 0
        if buffered:
            await run_in_threadpool(out.write, b"".join(buffered))
    if size == 0:
        raise ServeError(422, "empty_body", "the request has no body: send the clip")


def _suffix(name):
    from pathlib import PurePosixPath

    suffix = PurePosixPath(name.replace("\\", "/")).suffix
    return suffix.lower() if _SUFFIX.match(suffix) else ""


def _too_large(size, limit_mb, at_least=False):
    more = "more than " if at_least else ""
    return ServeError(
        413, "payload_too_large", f"the clip, {more}{size} bytes, exceeds the limit of {limit_mb:g} MB (--max-video-mb)"
    )
