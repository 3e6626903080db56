"""Connecting to a Ray cluster: the one place that decides which cluster a run uses.

Ray is imported lazily, here only; without it, :func:`import_ray` says how to install it.
"""

import logging
import os
import re
from contextlib import contextmanager

from retinamask.core.errors import InputError, RetinaMaskError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'retinamask[ray]'"
LOCAL = "local"


def import_ray():
    """The ``ray`` module with Ray Data, or InputError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise InputError(f"--ray needs Ray Data, which is not installed ({e.name or e}): {INSTALL_HINT}") from None
    return ray


def resolve_address(address=None):
    """The cluster a run connects to: ``address`` ("auto", "ray://host:10001", "host:6379"), else
    the RAY_ADDRESS environment variable, else "local" (a new Ray instance on this machine, never
    a cluster that happens to run here: pass "auto" for that)."""
    return address or os.environ.get("RAY_ADDRESS") or LOCAL


@contextmanager
def connected(address=None):
    """Yield the ``ray`` module connected to the cluster :func:`resolve_address` names.

    A driver that is already connected (``ray.is_initialized()``, e.g. a notebook or a test that
    called ``ray.init``) keeps its connection and ``address`` is not used; otherwise the
    connection made here is closed on exit (a local instance stops with it). Ray's own
    progress bars and per-dataset logs are turned off: the commands show their own.
    Raises InputError when the cluster cannot be reached.
    """
    ray = import_ray()
    owned = not ray.is_initialized()
    if owned:
        target = resolve_address(address)
        options = {"logging_level": logging.WARNING, "log_to_driver": True}
        if target == LOCAL:
            options["include_dashboard"] = False
        try:
            ray.init(address=target, **options)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
            raise InputError(
                f"cannot connect to the Ray cluster at {target!r}: {' '.join(str(e).split())[:300]}"
            ) from None
        logger.info("Ray: connected to %s (%s)", target, _describe_resources(ray.cluster_resources()))
    else:
        logger.info("Ray: using this driver's connection (%s)", _describe_resources(ray.cluster_resources()))
    try:
        _quiet_data_context(ray)
        yield ray
    finally:
        if owned:
            ray.shutdown()


def alive_node_resources(ray):
    """[{resource: amount}] of the cluster's nodes that are alive (CPU, GPU, memory, ...)."""
    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]


def _describe_resources(resources):
    parts = [f"{resources.get('CPU', 0):g} CPUs"]
    if resources.get("GPU"):
        parts.append(f"{resources['GPU']:g} GPUs")
    return ", ".join(parts)


def _quiet_data_context(ray):
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


def as_user_error(error):
    """A failed Ray job -> the RetinaMaskError a worker raised (the local run's one line), or a
    RetinaMaskError describing the failure.

    Ray hands a worker's exception back wrapped (RayTaskError, UserCodeException, RayActorError)
    and, pickled across processes, without its ``__cause__`` chain; the worker's traceback text is
    kept, so the last ``retinamask.core.errors.X: message`` line in it names the error.
    """
    from retinamask.core import errors

    seen = error
    for _ in range(10):  # where the chain survived (e.g. an error raised in this process)
        if isinstance(seen, RetinaMaskError):
            return seen
        inner = getattr(seen, "cause", None)
        if not isinstance(inner, BaseException):
            inner = seen.__cause__ or seen.__context__
        if inner is None:
            break
        seen = inner
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = re.findall(r"retinamask\.(?:core\.)?errors\.(\w+): ([^\n]+)", text)
    if found:
        name, message = found[-1]
        kind = getattr(errors, name, RetinaMaskError)
        if not (isinstance(kind, type) and issubclass(kind, RetinaMaskError)):
            kind = RetinaMaskError
        return kind(message.strip())  # the message already reads "path: cause"
    return RetinaMaskError(f"the Ray run failed: {type(error).__name__}: {' '.join(text.split())[:400]}")
