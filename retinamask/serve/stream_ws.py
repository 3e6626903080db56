"""``WS /v1/stream``: a live camera. The client sends frames (binary messages: JPEG, PNG or WebP files);
the server answers one JSON text message per processed frame.

Decisions:

* Latest-frame policy: one task receives, another processes. A frame that arrives while the previous
  one is still being processed replaces the one waiting (if any), which is dropped and counted: in the
  next answer (``dropped``, ``dropped_total``) and in /metrics. At most one frame waits, so an answer is
  never more than one model run behind the newest frame, however fast the client sends.
* Each frame goes the one path of ``/v1/predict`` (``pipeline.detect``: decode with ``--max-pixels``,
  the shared queue and sessions), so an answer's detections equal ``/v1/predict``'s on the same bytes.
* ``frame`` in an answer is the index of the binary message it answers (0-based, counting every frame
  received, dropped ones included). ``track=1``: a ByteTracker per connection, fed every detection with
  the frame's arrival time (s since the first frame); each answered detection gets ``track_id`` (None
  when untracked).
* Query: ``track``, ``score_threshold``, ``max_detections``, ``masks=rle|none``, and ``api_key`` (a
  browser cannot set headers on a WebSocket; ``Authorization`` / ``X-API-Key`` headers work too).
* Close codes: 4401 unauthorized (a missing or wrong key); 1003 a text message (frames are binary);
  1009 a frame over ``--max-image-mb``; 4415 not an image; 4422 a bad image (corrupt, over
  ``--max-pixels``) or a bad query value; 1013 the server not ready or overloaded (try again later);
  1011 the model failed; 1001 the server stopping. Each with a one-line reason.
"""

import asyncio
import contextlib
import logging
import time

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from retinamask.ops.tracking import ByteTracker
from retinamask.serve import encode
from retinamask.serve.errors import ServeError
from retinamask.serve.metrics import stage_ms
from retinamask.serve.pipeline import check_key, detect, encoded_results

log = logging.getLogger(__name__)

UNAUTHORIZED, TEXT, TOO_BIG, NOT_AN_IMAGE, BAD_IMAGE, TRY_LATER, FAILED, GOING_AWAY = (
    4401,
    1003,
    1009,
    4415,
    4422,
    1013,
    1011,
    1001,
)
_CLOSE_OF_STATUS = {401: UNAUTHORIZED, 413: TOO_BIG, 415: NOT_AN_IMAGE, 422: BAD_IMAGE, 503: TRY_LATER, 504: TRY_LATER}


class StreamClosed(Exception):
    def __init__(self, code, reason):
        super().__init__(reason)
        self.code, self.reason = code, reason


def add_route(app, state, path):
    @app.websocket(path)
    async def stream(websocket: WebSocket):
        await Stream(state, websocket).run()


class Stream:
    """One connection."""

    def __init__(self, state, websocket):
        self.state = state
        self.ws = websocket
        self.waiting = None  # (index, bytes, arrival) of the newest frame not yet taken
        self.arrived = asyncio.Event()
        self.received = 0
        self.dropped = 0  # since the last answer
        self.dropped_total = 0
        self.answered = 0
        self.first_arrival = None
        self.closing = None  # the StreamClosed that ends the connection
        self.tracker = None
        self.ended = False  # the receiver has stopped (the client left, or a bad message)

    async def run(self):
        metrics = self.state.video_metrics
        await self.ws.accept()
        metrics.connections.inc()
        try:
            self.options = self._options()
            self._check_key()
            receiver = asyncio.create_task(self._receive())
            try:
                await self._process()
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receiver
        except StreamClosed as e:
            self.closing = e
        except WebSocketDisconnect:
            pass
        finally:
            metrics.connections.dec()
        if self.closing is not None and self.ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(self.closing.code, self.closing.reason[:120])

    def _options(self):
        params = self.ws.query_params
        try:
            track = params.get("track", "0").lower() in ("1", "true", "yes", "on")
            score_threshold = float(params.get("score_threshold", "0"))
            max_detections = int(params.get("max_detections", "100"))
            masks = params.get("masks", "rle")
            if not 0 <= score_threshold <= 1 or not 1 <= max_detections <= 1000 or masks not in ("rle", "none"):
                raise ValueError
        except ValueError:
            raise StreamClosed(
                BAD_IMAGE, "bad query: score_threshold 0..1, max_detections 1..1000, masks rle|none, track 0|1"
            ) from None
        if track:
            self.tracker = ByteTracker()
        return {"track": track, "score_threshold": score_threshold, "max_detections": max_detections, "masks": masks}

    def _check_key(self):
        headers = self.ws.headers
        try:
            check_key(
                self.state.settings.api_key,
                headers.get("authorization"),
                headers.get("x-api-key") or self.ws.query_params.get("api_key"),
            )
        except ServeError as e:
            raise StreamClosed(UNAUTHORIZED, e.message) from None

    async def _receive(self):
        """Take every message; keep only the newest frame waiting (the others dropped, counted)."""
        limit = self.state.settings.max_body_bytes
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:
                    self.closing = StreamClosed(TEXT, "frames are binary messages (JPEG, PNG or WebP files)")
                    break
                if len(data) > limit:
                    mb = limit / (1024 * 1024)
                    self.closing = StreamClosed(TOO_BIG, f"a frame of {len(data)} bytes exceeds --max-image-mb {mb:g}")
                    break
                now = time.perf_counter()
                if self.first_arrival is None:
                    self.first_arrival = now
                if self.waiting is not None:
                    self.dropped += 1
                    self.dropped_total += 1
                    self.state.video_metrics.dropped.labels("stream").inc()
                self.waiting = (self.received, data, now)
                self.received += 1
                self.arrived.set()
        finally:
            self.ended = True
            self.arrived.set()

    async def _process(self):
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            if self.closing is not None:
                raise self.closing
            if self.waiting is None:
                if self.ended:
                    return
                continue
            index, data, arrival = self.waiting
            self.waiting = None
            dropped, self.dropped = self.dropped, 0
            answer = await self._answer(index, data, arrival, dropped)
            try:
                await self.ws.send_text(encode.json_bytes(answer).decode())
            except Exception:  # the client left while its frame was processed
                return
            self.answered += 1
            self.state.video_metrics.frames.labels("stream").inc()
            if self.waiting is not None:
                self.arrived.set()

    async def _answer(self, index, data, arrival, dropped):
        state, options = self.state, self.options
        if state.draining:
            raise StreamClosed(GOING_AWAY, "the server is stopping")
        if not state.ready:
            raise StreamClosed(TRY_LATER, "the server is not ready (warming up or draining)")
        timings = {}
        deadline = time.perf_counter() + state.settings.timeout_s
        try:
            rgb, detections = await detect(state, data, timings, deadline)
        except ServeError as e:
            code = _CLOSE_OF_STATUS.get(e.status, FAILED)
            raise StreamClosed(code, f"frame {index}: {e.message}") from None
        track_ids = None
        if self.tracker is not None:
            seconds = arrival - self.first_arrival
            track_ids = self.tracker.update(detections.boxes, detections.scores, detections.labels, seconds)
        keep = encode.select(detections, options["score_threshold"], options["max_detections"])
        results = await encoded_results(state, detections, keep, options["masks"], timings)
        if track_ids is not None:
            for result, i in zip(results, keep):
                result["track_id"] = int(track_ids[i]) if track_ids[i] >= 1 else None
        state.metrics.observe_stages(timings)
        return {
            "frame": index,
            "received": self.received,
            "dropped": dropped,
            "dropped_total": self.dropped_total,
            "image": {"height": int(rgb.shape[0]), "width": int(rgb.shape[1])},
            "latency_ms": round((time.perf_counter() - arrival) * 1000, 3),
            "timings_ms": stage_ms(timings),
            "detections": results,
        }
