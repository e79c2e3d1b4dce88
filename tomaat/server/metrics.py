"""Prometheus metrics for one service, in a registry of its own so services in one process stay apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, worker, budget=None, batcher=None, volumes=None):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tomaat_predictions", "Prediction requests by HTTP status", ["status"], registry=self.registry
        )
        self.stages = Histogram(
            "tomaat_stage_seconds", "Time per request stage", ["stage"], buckets=BUCKETS, registry=self.registry
        )
        queued = Gauge("tomaat_queued_requests", "Requests waiting for a worker thread", registry=self.registry)
        queued.set_function(lambda: worker.queued)
        running = Gauge("tomaat_in_flight_requests", "Requests being processed", registry=self.registry)
        running.set_function(lambda: worker.in_flight)
        if budget is not None:
            held = Gauge("tomaat_pending_body_bytes", "Bytes of request bodies held at once", registry=self.registry)
            held.set_function(lambda: budget.used)
        if volumes is not None and volumes.enabled:  # POST /volumes: what the stored volumes hold
            stored = Gauge("tomaat_stored_volume_bytes", "Decoded bytes of stored volumes held", registry=self.registry)
            stored.set_function(lambda: volumes.held_bytes)
            count = Gauge("tomaat_stored_volumes", "Stored volumes held", registry=self.registry)
            count.set_function(lambda: len(volumes))
        if batcher is not None:  # a batched app: count and sum say how full its batches are
            sizes = Histogram(
                "tomaat_batch_size", "Requests per batch of inference", buckets=BATCH_BUCKETS, registry=self.registry
            )
            batcher.on_batch = sizes.observe
            waiting = Gauge("tomaat_batch_waiting_requests", "Requests waiting for a batch", registry=self.registry)
            waiting.set_function(lambda: batcher.waiting)

    def observe(self, status: int, timings: dict) -> None:
        self.requests.labels(str(status)).inc()
        for stage, seconds in timings.items():
            self.stages.labels(stage).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """A stage timed after the worker reported the request: `send`, timed on the reactor."""
        self.stages.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
