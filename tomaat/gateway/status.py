"""The operator's view: /health and Prometheus /metrics over HTTP, and the list of series in the spool.

The HTTP server is the standard library's (two read-only pages on loopback by default); the metrics
are prometheus_client's, as the prediction server's are. Nothing here names a patient: series are
listed by UID, calling AE, state and counts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .spool import OPEN, TERMINAL, Spool


class Metrics:
    def __init__(self, spool: Spool):
        self.registry = registry = CollectorRegistry()
        self.received = Counter(
            "tomaat_gateway_series_received", "Series complete (quiet time passed)", registry=registry
        )
        self.sent = Counter(
            "tomaat_gateway_series_sent", "Series whose results were all acknowledged", registry=registry
        )
        self.failed = Counter("tomaat_gateway_series_failed", "Series given up on", registry=registry)
        self.unmatched = Counter("tomaat_gateway_series_unmatched", "Series that matched no rule", registry=registry)
        self.refused = Counter(
            "tomaat_gateway_instances_refused_full", "Instances refused: the spool was full", registry=registry
        )
        self.expired = Counter(
            "tomaat_gateway_series_expired",
            "Failed or held series deleted from the spool after the retention time",
            registry=registry,
        )
        kept = {
            state: Gauge(
                f"tomaat_gateway_series_{state}_kept",
                f"Series {state} and still in the spool (until deleted, or the retention time passes)",
                registry=registry,
            )
            for state in ("failed", "held")
        }
        for state, gauge in kept.items():
            gauge.set_function(_counting(spool, state))
        in_progress = Gauge(
            "tomaat_gateway_series_in_progress", "Series in the spool, not yet sent or failed", registry=registry
        )
        spool_bytes = Gauge("tomaat_gateway_spool_bytes", "Bytes the spool holds", registry=registry)
        in_progress.set_function(lambda: sum(1 for j in series(spool) if j["state"] not in ("failed", "held")))
        spool_bytes.set_function(lambda: spool.bytes)


def _counting(spool: Spool, state: str) -> Callable[[], float]:
    return lambda: sum(1 for j in series(spool) if j["state"] == state)


def series(spool: Spool) -> list[dict]:
    """Each batch's journal, as `gateway status` and the metrics see it (a batch deleted meanwhile is left out)."""
    found = []
    for batch in spool.batches():
        try:
            found.append(spool.journal(batch))
        except (OSError, ValueError):
            continue
    return found


def listing(spool: Spool, retention: float | None = None) -> list[dict]:
    """One row a batch; a failed or held one says, with a retention, in how many seconds it is deleted."""
    rows = []
    now = time.time()
    for journal in series(spool):
        batch = journal["batch"]
        try:
            count = len(spool.instances(batch))
        except OSError:
            count = 0
        rows.append({
            "series_uid": journal["series_uid"],
            "calling_ae": journal["calling_ae"],
            "state": journal["state"],
            "instances": count,
            "results": len(journal.get("deliveries", journal.get("results", []))),  # a result to 2 places: 2
            "sent": len(journal.get("sent", [])),
            "attempts": journal.get("attempts", 0),
            "error": journal.get("error", ""),
            "age_s": round(time.time() - journal.get("created", time.time()), 1),
        })  # fmt: skip
        if retention is not None and journal["state"] in TERMINAL:
            since = journal.get(journal["state"], journal.get("created", now))
            rows[-1]["deleted_in_s"] = round(max(0.0, since + retention - now), 1)
    return rows


def serve(host: str, port: int, spool: Spool, metrics: Metrics) -> ThreadingHTTPServer:
    class Pages(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            if self.path == "/health":
                body = json.dumps(
                    {"status": "ok", "in_flight": sum(1 for r in listing(spool) if r["state"] != OPEN)}
                ).encode()
                kind = "application/json"
            elif self.path == "/metrics":
                body, kind = generate_latest(metrics.registry), CONTENT_TYPE_LATEST
            else:
                self.send_error(404, "expected /health or /metrics")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Pages)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="tomaat-gateway-status", daemon=True).start()
    return server
