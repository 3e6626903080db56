"""Every error the server answers is one JSON object ``{"error": {"code", "message"}}`` with a fitting
status (docs/errors.md, "HTTP errors"); never a traceback. Under ``/v2`` (the Open Inference Protocol)
the object is the protocol's ``{"error": "message"}``, and a bad image is a 400 (docs/errors.md)."""

import logging

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)


class OrjsonResponse(JSONResponse):
    """JSON through orjson (numpy values included)."""

    def render(self, content):
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ServeError(Exception):
    """An answer other than 200: ``status``, a stable machine-readable ``code`` and a one-line message."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = int(status), code, message, headers


def error_response(status, code, message, headers=None):
    return OrjsonResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


OIP_PREFIX = "/v2"
_OIP_STATUS = {415: 400, 422: 400}  # the protocol's bad input is 400 (a non-image, a bomb, a bad value)


def protocol_error_response(request, status, code, message, headers=None):
    """The error in the protocol of the request's route: ``/v2`` the Open Inference Protocol's, else ours."""
    path = request.url.path
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        return OrjsonResponse({"error": message}, status_code=_OIP_STATUS.get(status, status), headers=headers)
    return error_response(status, code, message, headers)


def install_handlers(app):
    """Map ServeError, validation errors, routing errors and anything unexpected to the JSON error."""

    @app.exception_handler(ServeError)
    async def _serve_error(request, e):
        return protocol_error_response(request, e.status, e.code, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'request'}: {err.get('msg')}" for err in e.errors()
        )
        return protocol_error_response(request, 422, "invalid_parameter", problems or "invalid request")

    @app.exception_handler(HTTPException)
    async def _http(request, e):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return protocol_error_response(request, e.status_code, code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, e):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        message = f"internal error ({type(e).__name__}); the server log has details"
        return protocol_error_response(request, 500, "internal_error", message)
