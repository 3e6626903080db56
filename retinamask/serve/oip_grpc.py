"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelInfer; Triton's other methods answer UNIMPLEMENTED) beside
the HTTP app, in the same process: ``serve --grpc-port PORT`` (the ``[grpc]`` extra; imported only then).

The stubs are the generated ones ``tritonclient``'s wheel ships (``service_pb2``, ``service_pb2_grpc``).
Each RPC runs on a thread of the gRPC server; ModelInfer hands its request to the app's event loop, where
it takes the one predict path of every protocol (``oip.infer`` -> ``pipeline.detect``: the same decoding,
limits, queue, sessions and metrics). Inputs come as ``raw_input_contents`` (what tritonclient sends) or
``contents.bytes_contents``; every output goes back as ``raw_output_contents``, empty ones included.
Errors: INVALID_ARGUMENT (a bad request, tensor or image), NOT_FOUND (model, version), UNAVAILABLE (not
ready, queue full), UNAUTHENTICATED (API key), DEADLINE_EXCEEDED (``--timeout-s``), INTERNAL (a failure).
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from retinamask.core.errors import ConfigError
from retinamask.serve import oip
from retinamask.serve.errors import ServeError
from retinamask.serve.pipeline import check_key

logger = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
MESSAGE_HEADROOM = 1024 * 1024  # protobuf framing, names and parameters beside the image's bytes
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The service over the app's ``state`` (model, batcher, metrics, readiness); ``loop``: the app's
    event loop, where inference requests run."""

    def __init__(self, state, loop):
        self.state, self.loop = state, loop

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=bool(self.state.ready))

    def ModelReady(self, request, context):
        def work():
            oip.check_model(self.state.model, request.name, request.version)
            return service_pb2.ModelReadyResponse(ready=bool(self.state.ready))

        return self._answer("ModelReady", context, work)

    def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(**oip.server_metadata())

    def ModelMetadata(self, request, context):
        def work():
            self._check_key(context)
            oip.check_model(self.state.model, request.name, request.version)
            described = oip.model_metadata(self.state.model)
            tensors = {
                side: [service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in described[side]]
                for side in ("inputs", "outputs")
            }
            return service_pb2.ModelMetadataResponse(
                name=described["name"], versions=described["versions"], platform=described["platform"], **tensors
            )

        return self._answer("ModelMetadata", context, work)

    def ModelInfer(self, request, context):
        def work():
            self._check_key(context)
            oip.check_model(self.state.model, request.model_name, request.model_version)
            running = asyncio.run_coroutine_threadsafe(oip.infer(self.state, request_of(request)), self.loop)
            return response_of(running.result(timeout=self.state.settings.timeout_s + 60))

        return self._answer("ModelInfer", context, work)

    def _check_key(self, context):
        metadata = dict(context.invocation_metadata())
        check_key(self.state.settings.api_key, metadata.get("authorization"), metadata.get("x-api-key"))

    def _answer(self, method, context, work):
        """``work()``'s response, or the gRPC status of its ServeError (an unexpected failure: INTERNAL,
        logged with its traceback); counted in /metrics as route ``grpc METHOD`` and the status's name."""
        metrics = self.state.metrics
        started = time.perf_counter()
        metrics.in_flight.inc()
        code, message = grpc.StatusCode.OK, None
        try:
            return work()
        except ServeError as e:
            code, message = _CODES.get(e.status, grpc.StatusCode.INTERNAL), e.message
        except Exception as e:
            logger.exception("unexpected error in gRPC %s", method)
            code, message = grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__}); the server log has details"
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(f"grpc {method}", code.name).inc()
            metrics.request_seconds.labels(f"grpc {method}").observe(time.perf_counter() - started)
        context.abort(code, message)


def request_of(request):
    """A ModelInferRequest -> oip.InferRequest."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise oip.bad(f"{len(raw)} raw_input_contents for {len(request.inputs)} input(s): one per input")
    inputs = []
    for index, tensor in enumerate(request.inputs):
        made = oip.Tensor(tensor.name, tensor.datatype, list(tensor.shape))
        if raw:
            made.raw = raw[index]
        elif tensor.contents.bytes_contents:
            made.items = list(tensor.contents.bytes_contents)
        inputs.append(made)
    return oip.InferRequest(
        id=request.id,
        parameters=_parameters(request.parameters),
        inputs=inputs,
        outputs=[(output.name, _parameters(output.parameters)) for output in request.outputs],
    )


def _parameters(parameters):
    values = {}
    for name, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[name] = getattr(parameter, kind) if kind else None
    return values


def response_of(answer):
    """An oip.InferAnswer -> a ModelInferResponse, every output in ``raw_output_contents``."""
    response = service_pb2.ModelInferResponse(model_name=answer.model_name, model_version=oip.VERSION, id=answer.id)
    for name, value in answer.parameters.items():
        response.parameters[name].int64_param = value
    for output in answer.outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(oip.raw_bytes(output))
    return response


class GrpcServer:
    """The service on host:port (0: a free port, then ``port`` says which), bound at once (a taken port is a
    ConfigError); :meth:`start` serves with the app's event loop, :meth:`stop` lets RPCs in flight finish."""

    def __init__(self, state, host, port):
        settings = state.settings
        workers = settings.max_queue + settings.sessions * settings.max_batch + 4  # beyond: the batcher's 503
        options = [
            ("grpc.max_receive_message_length", settings.max_body_bytes + MESSAGE_HEADROOM),
            ("grpc.max_send_message_length", -1),
        ]
        self.servicer = InferenceServicer(state, None)
        self.server = grpc.server(ThreadPoolExecutor(workers, thread_name_prefix="retinamask-grpc"), options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            raise ConfigError(f"cannot listen for gRPC on {address} (in use?)", path="--grpc-port") from None

    def start(self, loop):
        self.servicer.loop = loop
        self.server.start()

    def stop(self, grace_s):
        self.server.stop(grace_s).wait()
