"""The video metrics of one app, in its registry (``ServeMetrics.registry``): jobs by state, frames
processed (jobs and streams), frames dropped by the live streams' latest-frame policy, open WebSocket
streams."""

from prometheus_client import Counter, Gauge


class VideoMetrics:
    def __init__(self, registry):
        self.jobs = Gauge("retinamask_video_jobs", "Video jobs by state", ["state"], registry=registry)
        self.frames = Counter(
            "retinamask_video_frames", "Video frames processed, by source (job, stream)", ["source"], registry=registry
        )
        self.dropped = Counter(
            "retinamask_video_frames_dropped",
            "Frames of live streams dropped while the model was busy (the latest frame is kept)",
            ["source"],
            registry=registry,
        )
        self.connections = Gauge(
            "retinamask_stream_connections", "Open WebSocket streams (/v1/stream)", registry=registry
        )
        for state in ("queued", "running", "done", "failed", "cancelled"):
            self.jobs.labels(state).set(0)
        self.frames.labels("job")
        self.frames.labels("stream")
        self.dropped.labels("stream")
