"""Prometheus metrics of one service instance (own registry; names ptychoscan_<noun>_<unit>, no session-id labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "ptychoscan_http_request_duration_seconds", "HTTP request latency", ["method", "route", "status"], registry=r, buckets=_FAST
        )
        self.ask_seconds = Histogram("ptychoscan_ask_duration_seconds", "ask latency including the long-poll", registry=r, buckets=_SLOW)
        self.recon_seconds = Histogram(
            "ptychoscan_reconstruction_duration_seconds", "one batched reconstruction call", registry=r, buckets=_SLOW
        )
        self.recon_sessions = Histogram(
            "ptychoscan_reconstruction_batch_sessions", "sessions per batched reconstruction call", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64)
        )
        self.policy_seconds = Histogram("ptychoscan_policy_duration_seconds", "one planner call (all sessions)", registry=r, buckets=_FAST)
        self.decision_seconds = Histogram(
            "ptychoscan_decision_latency_seconds", "last frame of a chunk received -> next batch available", registry=r, buckets=_SLOW
        )
        self.decision_wait_seconds = Histogram(
            "ptychoscan_decision_wait_seconds", "last frame of a chunk received -> the compute worker takes the chunk", registry=r, buckets=_FAST
        )
        self.ingest_seconds = Histogram(
            "ptychoscan_ingest_batch_duration_seconds", "handling of one received batch of stream events (one detector's waiting messages)", registry=r, buckets=_FAST
        )
        self.frames = Counter("ptychoscan_ingest_frames_total", "frames stored into sessions", registry=r)
        self.bytes = Counter("ptychoscan_ingest_bytes_total", "decoded frame bytes stored", registry=r)
        self.unclaimed_frames = Counter(
            "ptychoscan_ingest_unclaimed_frames_total", "frames from a detector endpoint no session in progress reads (held for a tell)", registry=r
        )
        self.forwarded = Counter("ptychoscan_forward_messages_total", "detector messages forwarded on the forward endpoint", registry=r)
        self.forward_dropped = Counter(
            "ptychoscan_forward_dropped_messages_total", "detector messages not forwarded: nobody connected or the consumer fell behind (forward_hwm)", registry=r
        )
        self.stream_errors = Counter("ptychoscan_ingest_errors_total", "stream problems by kind", ["kind"], registry=r)
        self.batches_issued = Counter("ptychoscan_batches_issued_total", "batches of positions published", registry=r)
        self.batches_complete = Counter("ptychoscan_batches_completed_total", "batches whose frames all arrived", registry=r)
        self.recon_reduced = Counter(
            "ptychoscan_reconstruction_reduced_updates_total", "incremental updates shrunk to keep pace with the microscope", registry=r
        )
        self.recon_queue = Gauge("ptychoscan_reconstruction_queue_depth", "sessions waiting for the compute worker", registry=r)
        self.finals_pending = Gauge(
            "ptychoscan_final_reconstructions_pending", "sessions whose last chunk's full reconstruction runs (or waits) between decisions", registry=r
        )
        self.buffered_frames = Gauge("ptychoscan_ingest_buffered_frames", "frames waiting for their tell", registry=r)
        self.compiled_receive_loop = Gauge(
            "ptychoscan_ingest_compiled_receive_loop", "1 while the compiled receive loop drains the detectors, 0 with the Python loop", registry=r
        )
        self.sessions_active = Gauge("ptychoscan_sessions_active", "sessions not done, stopped or failed", registry=r)
        self.storage_errors = Counter("ptychoscan_storage_errors_total", "session store write failures", registry=r)
        self.model = Info("ptychoscan_model", "planner and reconstructor in use", registry=r)
