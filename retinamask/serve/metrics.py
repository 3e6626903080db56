"""Prometheus metrics of one app (its own registry, so that several apps in one process, as in tests,
do not collide)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

STAGES = ("decode", "preprocess", "queue", "infer", "postprocess", "encode")


def stage_ms(timings):
    """A request's stage seconds as the answers' ``timings_ms``: milliseconds to 3 decimals, in stage order."""
    return {stage: round(timings[stage] * 1000, 3) for stage in STAGES if stage in timings}


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BYTES_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


class ServeMetrics:
    """Requests by route and status, latency per stage, queue depth, in-flight requests, batch sizes,
    response bytes."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        self.requests = Counter(
            "retinamask_requests",
            "Requests by route (an HTTP route, or 'grpc METHOD') and status (HTTP, or the gRPC code's name)",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "retinamask_request_seconds", "Request latency by route", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram(
            "retinamask_stage_seconds",
            "Time per stage of a prediction (/v1/predict, /v2 infer over REST and gRPC)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("retinamask_queue_depth", "Images waiting for a session", registry=r)
        self.in_flight = Gauge("retinamask_in_flight_requests", "Requests being answered", registry=r)
        self.batch_size = Histogram(
            "retinamask_batch_size", "Images per model run", buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=r
        )
        self.response_bytes = Histogram(
            "retinamask_response_bytes", "Response body size by route", ["route"], buckets=_BYTES_BUCKETS, registry=r
        )

    def observe_batcher(self, event, value):
        if event == "queue_depth":
            self.queue_depth.set(value)
        elif event == "batch_size":
            self.batch_size.observe(value)

    def observe_stages(self, timings):
        for stage, seconds in timings.items():
            self.stage_seconds.labels(stage).observe(seconds)

    def exposition(self):
        return generate_latest(self.registry)
