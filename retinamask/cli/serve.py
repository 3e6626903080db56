"""``retinamask serve``: the HTTP service (FastAPI + uvicorn) on one machine, or as a Ray Serve deployment.

Binds 127.0.0.1 unless ``--host`` says otherwise. SIGTERM (or Ctrl-C): not ready any more, every
accepted request is answered, exit 0.
"""

import logging
from pathlib import Path

from retinamask.cli import add_precision_argument
from retinamask.core.contract import MASK_PASTE_CHOICES
from retinamask.core.errors import EXIT_OK, ConfigError

HELP = "serve a model over HTTP (web page, /v1/predict with RLE masks, metrics; Ray Serve for scale)"
log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument("--model", "-m", type=Path, help="exported ONNX model (default: the shipped model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    add_precision_argument(parser)
    parser.add_argument(
        "--sessions",
        type=int,
        default=2,
        help="model sessions, one worker thread each (default 2: measured best on 2 cores)",
    )
    parser.add_argument("--threads", type=int, default=None, help="threads per session (default: CPUs / sessions)")
    parser.add_argument("--max-batch", type=int, default=1, help="images per model run (dynamic batching; default 1)")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="wait for same-canvas company (default 2)")
    parser.add_argument("--max-queue", type=int, default=16, help="images waiting before 503 (default 16)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="a request's budget before 504 (default 30)")
    parser.add_argument("--max-image-mb", type=float, default=16.0, help="request body limit, 413 (default 16)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="decoded image limit, 422 (default 40M)")
    parser.add_argument("--api-key", default=None, help="require this key (default: $RETINAMASK_API_KEY, else none)")
    parser.add_argument(
        "--mask-paste",
        choices=MASK_PASTE_CHOICES,
        default="original",
        help="masks into the image: original (default: the original's paste on an integer box) or subpixel "
        "(each pixel sampled at its centre: sharper on small objects)",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve the Open Inference Protocol over gRPC on --host:PORT (off by default; 0: a free port; "
        "pip install 'retinamask[grpc]'). The /v2 REST routes are always on",
    )
    video = parser.add_argument_group("video (POST /v1/videos jobs, WS /v1/stream)")
    video.add_argument(
        "--jobs-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep video jobs here: a restart keeps the finished ones (default: a temporary folder)",
    )
    video.add_argument(
        "--jobs-ttl", type=float, default=86400.0, metavar="S", help="remove ended jobs after S seconds (default 86400)"
    )
    video.add_argument("--max-jobs", type=int, default=1, help="video jobs running at once (default 1)")
    video.add_argument("--max-queued-jobs", type=int, default=16, help="video jobs waiting before 503 (default 16)")
    video.add_argument("--max-video-mb", type=float, default=256.0, help="upload limit, 413 (default 256)")
    video.add_argument("--max-video-seconds", type=float, default=600.0, help="clip length limit, 422 (default 600)")
    ray = parser.add_argument_group("Ray Serve (pip install 'retinamask[ray]')")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run as a Ray Serve deployment (no ADDRESS: a local Ray instance)",
    )
    ray.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (default 1)")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    ray.add_argument(
        "--ray-config",
        type=Path,
        default=None,
        metavar="OUT.yaml",
        help="write the equivalent Serve config for 'serve deploy' and exit",
    )


def settings_from_args(args):
    from retinamask.serve.settings import ServeSettings

    if args.model is not None and not args.model.is_file():
        raise ConfigError("model file not found", args.model)
    return ServeSettings(
        model=args.model,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        sessions=args.sessions,
        threads=args.threads,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        max_image_mb=args.max_image_mb,
        max_pixels=args.max_pixels,
        api_key=ServeSettings.api_key_from_env(args.api_key),
        mask_paste=args.mask_paste,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        jobs_dir=args.jobs_dir,
        jobs_ttl=args.jobs_ttl,
        max_jobs=args.max_jobs,
        max_queued_jobs=args.max_queued_jobs,
        max_video_mb=args.max_video_mb,
        max_video_seconds=args.max_video_seconds,
    )


def run(args):
    settings = settings_from_args(args)
    if settings.grpc_port is not None:
        if args.ray_config is not None or args.ray is not None:
            raise ConfigError("--grpc-port is not offered with --ray: Ray's proxy serves HTTP (the /v2 REST routes)")
        require_grpc()
    on_ray = args.ray_config is not None or args.ray is not None
    if on_ray and settings.jobs_dir is not None and (args.replicas > 1 or args.autoscale):
        raise ConfigError(
            "--jobs-dir with several Ray replicas: each replica would take the others' running jobs for "
            "interrupted ones; run video jobs on one replica (or plain serve)",
            path="command line",
        )
    if args.ray_config is not None or args.ray is not None:
        from retinamask.serve.ray_serve import run_on_ray, write_serve_config

        if args.ray_config is not None:
            path = write_serve_config(args.ray_config, settings, args.replicas, args.autoscale)
            print(f"wrote the Serve config {path} (deploy it with: serve deploy {path})")
            return EXIT_OK
        return run_on_ray(settings, args.ray, args.replicas, args.autoscale)
    serve_forever(settings)
    return EXIT_OK


def require_grpc():
    """ConfigError (one line) unless the [grpc] extra is installed: grpcio and tritonclient's stubs."""
    try:
        import grpc  # noqa: F401
        from tritonclient.grpc import service_pb2_grpc  # noqa: F401
    except (ImportError, RuntimeError) as e:
        raise ConfigError(
            f"--grpc-port needs the grpc extra, which is not installed ({e}): pip install 'retinamask[grpc]'",
            path="command line",
        ) from None


def serve_forever(settings):
    """uvicorn on settings.host:port until SIGTERM/SIGINT; then drain and return."""
    import signal

    import uvicorn

    from retinamask.serve.app import create_app

    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("binding %s without --api-key: anyone who reaches this address can use the server", settings.host)
    app = create_app(settings, log=log.info)
    state = app.state.server

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            state.ready, state.draining = False, True  # readiness drops at once; accepted requests finish
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:  # a requested stop, done gracefully: exit 0 (uvicorn would re-raise it)
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
    )
    server = DrainingServer(config)
    log.info("serving on http://%s:%d (web page at /, API docs at /docs)", settings.host, settings.port)
    server.run()
