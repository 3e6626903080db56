"""``predict`` over video files and live sources: per video ``{stem}.mp4`` (unless results only) + ``{stem}.jsonl``
(torch-free).

For each source, :func:`~retinamask.apps.predict_video.frames_of` yields the processed frames while an
output thread turns each into its JSONL line (predict's image JSON per detection, plus ``track_id``)
and its annotated frame in the H.264 MP4, so decoding, the model and encoding overlap.

Nothing is lost: the JSONL is written line by line as frames are done (complete lines only), the MP4
under a temporary name renamed when closed (a stopped or failed run still closes it: a playable file
of the frames done). ``videos.json`` records each video's state; a rerun skips the files recorded
complete, and redoes the others. A source that fails (cannot be opened, damaged, a stream that stays
down) is reported in one line and the run goes on with the next one.
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from retinamask.apps.predict_video import FrameOptions, frames_of
from retinamask.core.errors import EXIT_ITEMS_FAILED, EXIT_OK, RetinaMaskError
from retinamask.core.fileio import atomic_write_json, atomic_write_text
from retinamask.formats.video_read import open_video
from retinamask.formats.video_results import JsonlWriter, mot_lines, mots_lines, read_jsonl, ytvis_results
from retinamask.formats.video_write import VideoWriter
from retinamask.ops.coco_results import detections_to_json
from retinamask.ops.draw import draw_prediction
from retinamask.ops.tracking import ByteTracker

log = logging.getLogger(__name__)

STATE_FILE = "videos.json"
YTVIS_FILE = "results_ytvis.json"


@dataclass(frozen=True)
class VideoJobOptions:
    """The outputs of a video run: ``frames`` (:class:`FrameOptions`), tracking, the ``annotated`` MP4 (False:
    results only, no overlay drawn or encoded), ``audio`` copied from the source into it, overlay
    ``score_threshold``, the YouTube-VIS and MOT/MOTS files, ``category_ids`` (label L -> ``category_ids[L - 1]``,
    for YouTube-VIS)."""

    frames: FrameOptions = field(default_factory=FrameOptions)
    track: bool = False
    tracked_only: bool = False
    lost_seconds: float = 1.0
    annotated: bool = True
    audio: bool = True
    score_threshold: float = 0.3
    save_ytvis: bool = False
    save_mot: bool = False
    category_ids: tuple | None = None


def predict_videos(predict, sources, output_dir, options=None, progress=None, strict=False):
    """Run ``predict`` (a predictor, or a list of sessions of one model: :func:`~.predict_video.frames_of`) over
    ``sources`` (:class:`~retinamask.apps.predict_sources.Source` of kind video or
    live) into ``output_dir``. Returns a summary dict: ``written``, ``skipped``, ``failed`` (``{"file",
    "cause"}``), ``frames``, ``dropped``, ``exit_code``. A bad video is reported and the next one runs;
    ``strict`` raises the first (its state recorded, so a rerun redoes it). KeyboardInterrupt (Ctrl-C, SIGTERM)
    closes the current video's files first, then propagates."""
    options = options or VideoJobOptions()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(output_dir)
    summary = {"written": [], "skipped": [], "failed": [], "frames": 0, "dropped": 0}
    for video_id, source in enumerate(sources, start=1):
        entry = state.get(source.stem)
        if source.kind == "video" and _complete(entry, source, output_dir, options):
            summary["skipped"].append(source.location)
            continue
        entry = {
            "source": source.location,
            "video_id": video_id,
            "options": _options_record(options),
            "complete": False,
            "frames": 0,
        }
        state[source.stem] = entry
        try:
            _predict_one(predict, source, output_dir, options, entry, progress)
        except RetinaMaskError as e:
            entry["error"] = e.cause
            if strict:
                raise
            log.error("%s", e)
            summary["failed"].append({"file": source.location, "cause": e.cause})
        finally:
            atomic_write_json(output_dir / STATE_FILE, state)
            summary["frames"] += entry["frames"]
            summary["dropped"] += entry.get("dropped", 0)
        if "error" not in entry:
            summary["written"].append(source.location)
    if options.save_ytvis:
        _write_ytvis(output_dir, state, options.category_ids)
    summary["output_dir"] = str(output_dir)
    summary["exit_code"] = EXIT_ITEMS_FAILED if summary["failed"] else EXIT_OK
    return summary


def _options_record(options):
    """What a video's outputs depend on besides the source and the model (a rerun with others redoes it)."""
    frames = options.frames
    return {
        "vid_stride": frames.vid_stride,
        "max_frames": frames.max_frames,
        "duration": frames.duration,
        "track": options.track,
        "tracked_only": options.tracked_only,
        "lost_seconds": options.lost_seconds,
        "annotated": options.annotated,
        "audio": options.audio,
        "score_threshold": options.score_threshold,
    }


def _complete(entry, source, output_dir, options):
    return (
        entry is not None
        and entry.get("complete")
        and entry.get("source") == source.location
        and entry.get("options") == _options_record(options)
        and (not options.annotated or (output_dir / f"{source.stem}.mp4").is_file())
        and (output_dir / f"{source.stem}.jsonl").is_file()
    )


def _predict_one(predict, source, output_dir, options, entry, progress):
    """One source into ``{stem}.mp4`` / ``.jsonl`` (and MOT files); ``entry`` (its state) updated as it goes."""
    from retinamask.core.jobs import progress_bar

    frames = options.frames
    tracker = ByteTracker(lost_seconds=options.lost_seconds) if options.track else None
    with open_video(source.location, timeout=frames.timeout, reconnect=frames.reconnect) as reader:
        info = reader.info
        total = None if info.live or info.frames is None else -(-info.frames // frames.vid_stride)
        if frames.max_frames is not None and total is not None:
            total = min(total, frames.max_frames)
        audio = source.location if options.audio and info.has_audio and not info.live else None
        outputs = _VideoOutputs(output_dir, source.stem, info, audio, options)
        started = time.perf_counter()
        try:
            with progress_bar(source.stem, total, progress) as bar:
                bar.unit = "frame"
                results = frames_of(
                    predict, reader, track=options.track, tracked_only=options.tracked_only, tracker=tracker,
                    options=frames,
                )  # fmt: skip
                for result in results:
                    outputs.put(result)
                    entry["frames"] += 1
                    entry["dropped"] = entry.get("dropped", 0) + result.dropped
                    bar.update(1)
        finally:
            outputs.close()
            entry["seconds"] = round(time.perf_counter() - started, 3)
    if entry.get("dropped"):
        log.info(
            "%s: %d frames dropped while the model was busy (the latest frame is kept; --stream-buffer keeps all)",
            source.location,
            entry["dropped"],
        )
    entry["complete"] = not info.live
    if options.save_mot and options.track:
        _write_mot(output_dir, source.stem)


class _VideoOutputs:
    """The output thread of one video: JSONL lines and annotated frames (unless ``options.annotated`` is False),
    in frame order, off the model's thread. ``put`` blocks when it is a few frames behind (bounded memory)."""

    def __init__(self, output_dir, stem, info, audio_from, options):
        self._jsonl = JsonlWriter(output_dir / f"{stem}.jsonl")
        self._video = self._annotated_mp4(output_dir, stem, info, audio_from, options) if options.annotated else None
        self._options = options
        self._queue = queue.Queue(maxsize=4)
        self._error = None
        self._thread = threading.Thread(target=self._run, name=f"write {stem}", daemon=True)
        self._thread.start()

    @staticmethod
    def _annotated_mp4(output_dir, stem, info, audio_from, options):
        rate = info.frame_rate / options.frames.vid_stride if info.frame_rate else None
        return VideoWriter(
            output_dir / f"{stem}.mp4",
            info.width,
            info.height,
            info.time_base,
            rate,
            audio_from=audio_from,
            display_matrix=info.display_matrix,  # a phone's rotation: players turn the annotated video as the source
        )

    def put(self, result):
        if self._error is not None:
            raise self._error
        self._queue.put(result)

    def _run(self):
        while (result := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._jsonl.write(frame_record(result))
                if self._video is None:
                    continue
                overlay = draw_prediction(
                    result.rgb,
                    result.detections,
                    self._options.score_threshold,
                    min_side=0,
                    track_ids=result.track_ids,
                )
                self._video.write(overlay, result.pts)
            except BaseException as e:
                self._error = e

    def close(self):
        """Finish the frames queued, then close both files (the MP4 renamed into place, playable)."""
        self._queue.put(None)
        self._thread.join()
        try:
            if self._video is not None:
                self._video.close()
        finally:
            self._jsonl.close()
        if self._error is not None:
            raise self._error


def frame_record(result):
    """The JSONL line of one frame: ``{"frame", "pts", "detections"}``, each detection as predict's image JSON
    has it plus ``track_id`` (None when untracked or without tracking)."""
    detections = detections_to_json(result.detections)["detections"]
    ids = result.track_ids
    for i, detection in enumerate(detections):
        detection["track_id"] = int(ids[i]) if ids is not None and ids[i] >= 1 else None
    return {"frame": int(result.index), "pts": round(float(result.seconds), 6), "detections": detections}


def _write_mot(output_dir, stem):
    records = read_jsonl(output_dir / f"{stem}.jsonl")
    atomic_write_text(output_dir / f"{stem}.mot.txt", "".join(line + "\n" for line in mot_lines(records)))
    atomic_write_text(output_dir / f"{stem}.mots.txt", "".join(line + "\n" for line in mots_lines(records)))


def _write_ytvis(output_dir, state, category_ids):
    """results_ytvis.json of every video of the folder's state, rebuilt from their JSONL files."""
    results = []
    for stem, entry in sorted(state.items(), key=lambda item: item[1]["video_id"]):
        path = output_dir / f"{stem}.jsonl"
        if path.is_file():
            results.extend(ytvis_results(read_jsonl(path), entry["video_id"], category_ids))
    atomic_write_json(output_dir / YTVIS_FILE, results)


def _read_state(output_dir):
    import json

    path = output_dir / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s: unreadable, every video is redone", path)
        return {}
    return state if isinstance(state, dict) else {}
