"""The HTTP service (``retinamask serve``; extra ``[serve]``): FastAPI + uvicorn, torch-free.

``create_app(settings)`` is the app as a library object: ``retinamask serve``, the tests and the
Ray Serve deployment run the same code. Data flow of one request: body (limits) -> image
(:mod:`~retinamask.formats.images`) -> canvas tensor (``OnnxPredictor.prepare``) -> the batcher's
session threads (``OnnxPredictor.run``, dynamic batching by canvas) -> Detections
(``OnnxPredictor.finish``, :mod:`retinamask.decode`) -> COCO results with RLE masks (:mod:`.encode`).
"""


def create_app(settings=None, model=None, log=None):
    """See :func:`retinamask.serve.app.create_app`."""
    from retinamask.serve.app import create_app as _create_app

    return _create_app(settings, model) if log is None else _create_app(settings, model, log=log)


__all__ = ["create_app"]
