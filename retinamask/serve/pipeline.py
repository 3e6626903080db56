"""The one path an image takes through the server, whatever the protocol (``/v1/predict``, the Open
Inference Protocol's ``/v2/.../infer`` over REST and gRPC): image file bytes -> decode (``--max-pixels``,
bombs) -> ``prepare`` -> the batcher's queue and session threads -> ``finish`` -> Detections, each stage
timed; plus the checks every protocol shares (readiness, the API key).

Errors are :class:`~retinamask.serve.errors.ServeError` with the HTTP status of ``/v1``; the protocols map
them (``errors.py`` for REST, ``oip_grpc.py`` for gRPC status codes).
"""

import asyncio
import hmac
import time

from starlette.concurrency import run_in_threadpool

from retinamask.core.errors import InputError
from retinamask.formats.images import NotAnImage, decode_image_bytes
from retinamask.serve import encode
from retinamask.serve.batcher import Draining, QueueFull
from retinamask.serve.errors import ServeError


def require_ready(state):
    """503 (Retry-After) before the warm-up has run and while draining."""
    if not state.ready:
        raise ServeError(503, "not_ready", "the server is not ready (warming up or draining)", {"Retry-After": "1"})


def check_key(expected, authorization=None, api_key=None):
    """401 unless ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` carries ``expected`` (constant-time
    compare); nothing to check when no key is configured."""
    if not expected:
        return
    given = api_key or ""
    if (authorization or "").lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ServeError(
            401,
            "unauthorized",
            "missing or wrong API key (send Authorization: Bearer KEY or X-API-Key: KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def detect(state, data, timings, deadline, full_masks=False):
    """``data`` (an encoded image file) -> (rgb, Detections) through the shared queue and sessions.

    ``timings`` gets seconds per stage (decode, preprocess, queue, infer, postprocess); ``deadline`` is a
    ``time.perf_counter()`` value (504 beyond it). ``full_masks``: paste full-image masks (the PNG
    overlay, polygons); else the detections keep ``mask_probs`` for the fused paste + RLE of ``encode``."""
    model = state.model
    rgb = await timed(timings, "decode", decode, data, state.settings.max_pixels)
    prepared = await timed(timings, "preprocess", model.prepare, rgb)
    try:
        item = state.batcher.submit(prepared, prepared.canvas_hw)
    except QueueFull as e:
        raise ServeError(503, "queue_full", f"overloaded: {e}; retry later", {"Retry-After": "1"}) from None
    except Draining:
        raise ServeError(503, "draining", "the server is shutting down", {"Retry-After": "1"}) from None
    try:
        outputs = await asyncio.wait_for(asyncio.wrap_future(item.future), max(deadline - time.perf_counter(), 0))
    except TimeoutError:
        item.future.cancel()
        raise ServeError(504, "timeout", f"no answer within --timeout-s {state.settings.timeout_s:g} s") from None
    except Exception as e:  # the runtime failed: its traceback is in the log (batcher)
        raise ServeError(500, "inference_failed", f"inference failed ({type(e).__name__}): {e}") from None
    timings["queue"] = item.started - item.enqueued
    timings["infer"] = item.finished - item.started
    detections = await timed(timings, "postprocess", model.finish, outputs, prepared, full_masks)
    return rgb, detections


async def timed(timings, stage, function, *args):
    """``function(*args)`` in a worker thread (never on the event loop); its seconds into ``timings``."""
    started = time.perf_counter()
    result = await run_in_threadpool(function, *args)
    timings[stage] = time.perf_counter() - started
    return result


async def encoded_results(state, detections, keep, masks, timings):
    """``detections[keep]`` as COCO results (``encode.coco_results``: the served model's category ids, mask
    threshold and paste; ``masks`` rle, polygon or none), timed as the "encode" stage."""
    model = state.model
    return await timed(
        timings,
        "encode",
        encode.coco_results,
        detections,
        keep,
        model.category_ids,
        masks,
        model.mask_threshold,
        model.mask_paste,
    )


def decode(data, max_pixels):
    try:
        return decode_image_bytes(data, "the uploaded image", max_pixels=max_pixels)
    except NotAnImage as e:
        raise ServeError(415, "not_an_image", e.cause) from None
    except InputError as e:
        raise ServeError(422, "bad_image", e.cause) from None
