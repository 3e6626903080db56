"""The same app as a Ray Serve deployment (``serve.ingress``): replicas or autoscaling, Ray's own request
queue limits, timeouts and graceful shutdown, and a ``check_health`` that runs a tiny inference.

Each replica builds the app itself (the model loads once per replica process) from the same
``create_app`` that ``retinamask serve`` runs.
"""

import logging
import time
from dataclasses import asdict
from pathlib import Path

from retinamask.core.errors import ConfigError

logger = logging.getLogger(__name__)
DEPLOYMENT_NAME = "retinamask"
APP_NAME = "retinamask"
_replica_app = None  # the app of this replica process (check_health reaches its model through it)


def parse_autoscale(text):
    """ "MIN:MAX" -> (min, max) replicas."""
    try:
        low, high = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ConfigError(f"--autoscale wants MIN:MAX (e.g. 1:4), got {text!r}") from None
    if not 0 <= low <= high or high < 1:
        raise ConfigError(f"--autoscale {text}: need 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def deployment_options(settings, replicas=1, autoscale=None):
    """``@serve.deployment`` options: replicas or autoscaling, Ray's queue limits, shutdown and health."""
    options = {
        "name": DEPLOYMENT_NAME,
        # a replica runs ``sessions`` model sessions; more requests than its queue can hold wait at Ray
        "max_ongoing_requests": settings.sessions * settings.max_batch + settings.max_queue,
        "max_queued_requests": settings.max_queue,
        "graceful_shutdown_timeout_s": settings.timeout_s + 5,
        "graceful_shutdown_wait_loop_s": 1.0,
        "health_check_period_s": 10.0,
        "health_check_timeout_s": max(30.0, settings.timeout_s),
        "ray_actor_options": {"num_cpus": settings.sessions * settings.session_threads},
    }
    if autoscale is not None:
        low, high = parse_autoscale(autoscale)
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": max(1, settings.sessions * settings.max_batch),
        }
    else:
        if int(replicas) < 1:
            raise ConfigError(f"--replicas must be >= 1, got {replicas}")
        options["num_replicas"] = int(replicas)
    return options


def build_application(settings, replicas=1, autoscale=None):
    """The Ray Serve application (``Deployment.bind()``) serving ``create_app(settings)`` (its /v1 and /v2
    REST routes; gRPC is not offered behind Ray's proxy)."""
    from ray import serve

    if settings.grpc_port is not None:
        raise ConfigError("--grpc-port is not offered with --ray: Ray's proxy serves HTTP (the /v2 REST routes)")

    def build_app():
        global _replica_app
        from retinamask.serve.app import create_app

        _replica_app = create_app(settings)
        return _replica_app

    @serve.deployment(**deployment_options(settings, replicas, autoscale))
    @serve.ingress(build_app)
    class RetinaMaskDeployment:
        def check_health(self):
            """A tiny inference through the replica's own queue; a busy replica (queue full) is healthy."""
            from retinamask.serve.batcher import QueueFull
            from retinamask.serve.model import tiny_image

            state = _replica_app.state.server if _replica_app is not None else None
            if state is None or state.batcher is None:
                raise RuntimeError("the replica's app has not started")
            if state.draining:
                return
            prepared = state.model.prepare(tiny_image())
            try:
                item = state.batcher.submit(prepared, prepared.canvas_hw)
            except QueueFull:
                return
            item.future.result(timeout=state.settings.timeout_s)

    return RetinaMaskDeployment.bind()


def run_on_ray(settings, address, replicas=1, autoscale=None, block=True):
    """Start (or join) Ray, run the deployment on settings.host:port; block until Ctrl-C/SIGTERM."""
    import ray
    from ray import serve

    ray.init(address=None if address in (None, "local") else address, ignore_reinit_error=True)
    serve.start(
        http_options={"host": settings.host, "port": settings.port, "request_timeout_s": settings.timeout_s},
    )
    serve.run(build_application(settings, replicas, autoscale), name=APP_NAME, route_prefix="/")
    logger.info("Ray Serve: %s on http://%s:%d", APP_NAME, settings.host, settings.port)
    if not block:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0


def serve_config(settings, replicas=1, autoscale=None):
    """The Serve config (``serve deploy`` YAML) equivalent to ``run_on_ray``."""
    options = deployment_options(settings, replicas, autoscale)
    deployment = dict(options.items())
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port, "request_timeout_s": settings.timeout_s},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "retinamask.serve.ray_serve:app_from_args",
                "args": args,
                "deployments": [deployment],
            }
        ],
    }


def app_from_args(args):
    """``serve deploy``'s application builder: the settings dict of a written config -> the application."""
    from retinamask.serve.settings import ServeSettings

    values = dict(args)
    if values.get("model"):
        values["model"] = Path(values["model"])
    return build_application(ServeSettings(**values))


def write_serve_config(path, settings, replicas=1, autoscale=None):
    import yaml

    from retinamask.core.fileio import atomic_write_text

    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(serve_config(settings, replicas, autoscale), sort_keys=False))
    return path
