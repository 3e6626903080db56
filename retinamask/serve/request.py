"""Reading /v1/predict's image out of a request: a multipart file, a raw ``image/*`` body or JSON
``{"image": base64}`` -- never a URL or a server-side path. The body limit is enforced while reading
(Content-Length first, then the bytes as they arrive), so an oversized body is refused before it is
read whole."""

import base64
import binascii

import orjson
from starlette.requests import Request

from retinamask.serve.errors import ServeError


def declared_length(request):
    """The request's Content-Length as an int (None when absent); ServeError 400 when it is no number."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        return int(declared)
    except ValueError:
        raise ServeError(400, "bad_request", "Content-Length is not a number") from None


async def read_body(request, limit):
    """The request body, at most ``limit`` bytes; ServeError 413 beyond it."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(declared, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size, limit, at_least=False):
    mb = limit / (1024 * 1024)
    more = "more than" if at_least else ""
    return ServeError(
        413, "payload_too_large", f"request body {more} {size} bytes exceeds the limit of {mb:g} MB (--max-image-mb)"
    )


async def image_bytes(request, body):
    """The image file bytes in ``body``, by the request's Content-Type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _multipart_image(request, body)
    if content_type == "application/json":
        return _json_image(body)
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return body
    raise ServeError(
        415,
        "unsupported_media_type",
        f"Content-Type {content_type or '(none)'} is not accepted: send the image as multipart/form-data "
        "(field 'image' or 'file'), as a raw image/* body, or as JSON {\"image\": base64}",
    )


async def _multipart_image(request, body):
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception as e:  # python-multipart's parse errors
        raise ServeError(422, "bad_multipart", f"cannot parse the multipart body: {e}") from None
    upload = form.get("image") or form.get("file")
    if upload is None or isinstance(upload, str):
        raise ServeError(422, "missing_image", "the multipart body has no file field named 'image' or 'file'")
    return await upload.read()


def _json_image(body):
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ServeError(422, "bad_json", f"the body is not valid JSON: {e}") from None
    encoded = payload.get("image") if isinstance(payload, dict) else None
    if not isinstance(encoded, str):
        raise ServeError(422, "missing_image", 'JSON bodies must be {"image": "<base64 of the image file>"}')
    if encoded.startswith("data:") and "," in encoded:  # a data URL from a browser
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(422, "bad_base64", "the 'image' value is not valid base64") from None
