"""``create_app``: the HTTP service as a library object (FastAPI), used by ``retinamask serve``, the tests
and the Ray Serve deployment alike.

Routes: POST /v1/predict, GET /v1/health/live, GET /v1/health/ready, GET /v1/models, GET /metrics,
GET /docs (OpenAPI), GET / (the web page), the Open Inference Protocol's /v2 routes (``oip_rest``), and the
video routes (``video_routes``: clips as jobs under /v1/videos, a live camera on WS /v1/stream).
Every route that predicts runs ``pipeline.detect``. Image decoding, pre- and post-processing and encoding run in
worker threads (never on the event loop); inference runs on the batcher's session threads.
"""

import asyncio
import contextlib
import logging
import threading
import time
from importlib import resources
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from retinamask.formats.images import warm_decoders
from retinamask.serve import encode, oip_rest, stream_ws, video_routes
from retinamask.serve.batcher import Batcher
from retinamask.serve.errors import OrjsonResponse, ServeError, install_handlers
from retinamask.serve.metrics import ServeMetrics, stage_ms
from retinamask.serve.pipeline import check_key, detect, encoded_results, require_ready, timed
from retinamask.serve.request import image_bytes, read_body
from retinamask.serve.video_jobs import VideoJobs
from retinamask.serve.video_metrics import VideoMetrics

logger = logging.getLogger(__name__)
PREDICT = "/v1/predict"


class ServerState:
    """What the routes share: the model, the batcher, the metrics, readiness."""

    def __init__(self, settings, model):
        self.settings = settings
        self.model = model
        self.metrics = ServeMetrics()
        self.batcher = None
        self.ready = False
        self.draining = False
        self.grpc_port = None  # the bound gRPC port (serve --grpc-port)
        self.video_metrics = VideoMetrics(self.metrics.registry)
        self.videos = VideoJobs(settings, model, self.video_metrics)

    def start(self):
        """Start the session threads, then warm up in the background: the server answers at once
        (live; ready = 503) and becomes ready when every session has run once."""
        self.batcher = Batcher(
            self.model.runners(),
            max_batch=self.model.max_batch,
            batch_wait_s=self.settings.batch_wait_ms / 1000.0,
            max_queue=self.settings.max_queue,
            observe=self.metrics.observe_batcher,
        )
        self._warm_up = threading.Thread(target=self._warm, name="retinamask-warm-up", daemon=True)
        self._warm_up.start()
        self.videos.start(self.batcher)

    def _warm(self):
        try:
            decoders = warm_decoders()  # the image decoders' first use, which the first request would pay
            seconds = self.model.warm_up()
        except Exception:
            logger.exception("the warm-up inference failed: the server stays not ready")
            return
        if not self.draining:
            logger.info(
                "warm-up: image decoders %.3f s, %s s per session; ready",
                decoders,
                ", ".join(f"{s:.2f}" for s in seconds),
            )
            self.ready = True

    def stop(self, timeout=None):
        """Not ready any more; every accepted image still runs; then the workers stop."""
        self.ready, self.draining = False, True
        self.videos.stop(timeout)  # running jobs stop after their frame, their files closed (valid)
        if self.batcher is not None:
            self.batcher.drain(timeout)
            self.batcher.close()


def create_app(settings=None, model=None, log=logger.info):
    """The FastAPI app. ``settings``: a ServeSettings (default: all defaults, the shipped model).
    ``model``: a ServedModel to serve instead of loading ``settings.model``."""
    from retinamask.serve.model import ServedModel
    from retinamask.serve.settings import ServeSettings

    settings = settings or ServeSettings()
    state = ServerState(settings, model or ServedModel(settings, log=log))

    # gRPC binds now (a taken port is a ConfigError before anything starts) and serves with the app
    grpc_server = _grpc_server(state, log) if settings.grpc_port is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(state.start)
        if grpc_server is not None:
            grpc_server.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            if grpc_server is not None:  # no new RPC; those in flight finish (they run on this loop)
                await run_in_threadpool(grpc_server.stop, settings.timeout_s)
            await run_in_threadpool(state.stop, settings.timeout_s)

    app = FastAPI(
        title="retinamask",
        summary="RetinaMask instance segmentation: boxes, labels, scores and COCO RLE masks",
        version=_version(),
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.server = state
    install_handlers(app)
    _add_accounting(app, state)
    _add_routes(app, state)
    oip_rest.add_routes(app, state)
    video_routes.add_routes(app, state)
    stream_ws.add_route(app, state, video_routes.STREAM)
    return app


def _grpc_server(state, log):
    """The Open Inference Protocol over gRPC on settings.host:grpc_port, sharing ``state`` (oip_grpc); bound,
    started with the app."""
    from retinamask.serve.oip_grpc import GrpcServer

    settings = state.settings
    server = GrpcServer(state, settings.host, settings.grpc_port)
    state.grpc_port = server.port
    log(f"gRPC (Open Inference Protocol, inference.GRPCInferenceService) on {settings.host}:{server.port}")
    return server


def _version():
    from retinamask import __version__

    return __version__


def _add_accounting(app, state):
    """Requests by route and status, latency, in-flight requests and response bytes, for every route."""
    metrics = state.metrics

    @app.middleware("http")
    async def account(request, call_next):
        path = request.url.path
        route = path if path in _ROUTES else (video_routes.route_label(path) or oip_rest.route_label(path))
        started = time.perf_counter()
        metrics.in_flight.inc()
        try:
            response = await call_next(request)
        finally:
            metrics.in_flight.dec()
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
        size = response.headers.get("content-length")
        if size is not None:
            metrics.response_bytes.labels(route).observe(int(size))
        return response


_ROUTES = {PREDICT, "/v1/health/live", "/v1/health/ready", "/v1/models", "/metrics", "/"}


def _check_key(state, request):
    """401 unless the request carries the configured API key (``pipeline.check_key``)."""
    check_key(state.settings.api_key, request.headers.get("authorization"), request.headers.get("x-api-key"))


def _add_routes(app, state):
    @app.get("/v1/health/live", summary="The process is up")
    async def live():
        return {"status": "live"}

    @app.get("/v1/health/ready", summary="Warm and accepting work (503 before the warm-up and while draining)")
    async def ready():
        if not state.ready:
            reason = "draining" if state.draining else "warming up"
            return OrjsonResponse({"status": reason}, status_code=503, headers={"Retry-After": "1"})
        return {"status": "ready"}

    @app.get("/v1/models", summary="The served model: classes, layout, resize policy, runtime, input contract")
    async def models(request: Request):
        _check_key(state, request)
        return {"models": [state.model.describe()]}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("retinamask.serve").joinpath("static/index.html").read_text("utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        return _static_file(name)

    @app.post(PREDICT, summary="Detect and segment one image", response_class=OrjsonResponse)
    async def predict(
        request: Request,
        score_threshold: float = Query(0.0, ge=0.0, le=1.0, description="drop detections scoring below"),
        max_detections: int = Query(100, ge=1, le=1000, description="at most this many, best first"),
        masks: Literal["rle", "polygon", "none"] = Query("rle", description="mask encoding"),
        format: Literal["json", "png"] = Query("json", description="JSON results or the overlay PNG"),
    ):
        _check_key(state, request)
        return await _predict(state, request, score_threshold, max_detections, masks, format)


_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


def _static_file(name):
    from pathlib import PurePosixPath

    suffix = PurePosixPath(name).suffix
    if "/" in name or name.startswith(".") or suffix not in _STATIC_TYPES:
        raise ServeError(404, "not_found", f"no static file {name!r}")
    try:
        text = resources.files("retinamask.serve").joinpath(f"static/{name}").read_text("utf-8")
    except FileNotFoundError:
        raise ServeError(404, "not_found", f"no static file {name!r}") from None
    return Response(text, media_type=_STATIC_TYPES[suffix])


async def _predict(state, request, score_threshold, max_detections, masks, response_format):
    settings, model = state.settings, state.model
    require_ready(state)
    deadline = time.perf_counter() + settings.timeout_s
    timings = {}

    body = await read_body(request, settings.max_body_bytes)
    data = await image_bytes(request, body)
    full_masks = response_format == "png" or masks == "polygon"  # else the fused paste + RLE in encode
    rgb, detections = await detect(state, data, timings, deadline, full_masks)
    keep = encode.select(detections, score_threshold, max_detections)
    if response_format == "png":
        png = await timed(timings, "encode", encode.overlay_png, rgb, detections, keep, score_threshold)
        state.metrics.observe_stages(timings)
        return Response(png, media_type="image/png", headers=_timing_headers(timings))
    results = await encoded_results(state, detections, keep, masks, timings)
    state.metrics.observe_stages(timings)
    return Response(encode.json_bytes(_body(model, rgb.shape, timings, results)), media_type="application/json")


def _body(model, shape, timings, results):
    """The JSON answer: image size, model, resize policy, runtime, per-stage times, COCO results."""
    return {
        "image": {"height": int(shape[0]), "width": int(shape[1])},
        "model": model.name,
        "resize": model.info.resize.describe(),
        "backend": model.backend,
        "precision": model.precision,
        "timings_ms": stage_ms(timings),
        "detections": results,
    }


def _timing_headers(timings):
    return {"Server-Timing": ", ".join(f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in timings.items())}
