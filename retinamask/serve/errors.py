"""Every error the server answers is one JSON object ``{"error": {"code", "message"}}`` with a fitting
status (docs/errors.md, "HTTP errors"); never a traceback."""

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


def install_handlers(app):
    """Map ServeError, validation errors, routing errors and anything unexpected to the JSON error."""

    @app.exception_handler(ServeError)
    async def _serve_error(request, e):
        return error_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'request'}: {err.get('msg')}" for err in e.errors()
        )
        return error_response(422, "invalid_parameter", problems or "invalid request")

    @app.exception_handler(HTTPException)
    async def _http(request, e):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, e):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(e).__name__}); the server log has details")
