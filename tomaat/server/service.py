"""A running prediction endpoint: configuration, thread pool, TLS and the listening port.

Everything is per instance, so tests and operators can run several services
in one process; only the GPU lock is shared, because the GPU is.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import threading
import time

from twisted.internet import task
from twisted.python.threadpool import ThreadPool

from .. import web
from ..body import Budget
from ..daemon import Daemon
from ..files import confined, scratch
from ..files.limits import DEFAULT_MAX_VOXELS, Limits
from ..protocol import elements
from ..trust import pin_fingerprint
from .announcer import Announcer
from .app import UPSTREAM, TomaatApp
from .delayed import DelayedResults
from .metrics import Metrics
from .pipeline import Pipeline
from .routes import PredictionRoutes
from .worker import Worker

log = logging.getLogger("tomaat.server")

_LOADING: contextvars.ContextVar[list | None] = contextvars.ContextVar("tomaat_loading", default=None)
PROTOCOL_VERSION = 2
METADATA = ("name", "modality", "anatomy", "task", "description", "version")
DEFAULTS = {
    "port": 9000,
    "interface": "0.0.0.0",  # where to listen
    "host": "",  # the public base URL announced to registries (upstream's key); default: this machine's name
    "announce": "",  # the registry's URL; empty: not announced
    "api_key": "",
    "announce_period": 1600.0,  # well inside the registry's default expiry of 3600 s
    "registry_fingerprint": None,  # pin an https registry's self-signed certificate (v1 fingerprint format)
    "threads": 8,
    "tls": True,
    "cert": None,
    "key": None,
    "state_dir": os.path.join(os.path.expanduser("~"), ".tomaat"),
    "delayed_responses": False,
    "response_ttl": 3600.0,
    "max_delayed_results": 256,  # uncollected delayed results held at once; then 503 (0: no limit)
    "max_delayed_bytes": 2 * 1024**3,  # their answers' bytes; a result past it is kept as a 507 error (0: none)
    "max_body_bytes": 2 * 1024**3,
    # Limits against heavy and hostile traffic (docs/security.md); 0 turns a limit off where noted.
    "max_voxels": DEFAULT_MAX_VOXELS,  # per image, read from its header before anything is allocated
    "max_decoded_bytes": 4 * 1024**3,  # one request's inputs once decoded, charged from their headers; then 413
    "max_decoded_total": 8 * 1024**3,  # all requests' decoded inputs at once; then 503 (0: none)
    "max_points": 100_000,  # per fiducials input; then 413
    "max_transform_parameters": 10_000_000,  # per transform input; then 413
    "decoders": 2,  # confined processes that decode NIfTI, NRRD and transform files (docs/security.md)
    "decoder_memory": confined.DEFAULT_MEMORY,  # address space each decoder may add once loaded
    "decode_timeout": confined.DEFAULT_TIMEOUT,  # seconds one file may take to decode; then 415
    "max_fields": 256,  # form fields per request
    "max_queue": 64,  # requests waiting for a worker thread; beyond it 503 + Retry-After (0: unbounded)
    "max_pending_bytes": 4 * 1024**3,  # bodies of 1 MiB+ held at once (received, queued, in work); then 503 (0: none)
    "app_timeout": 600.0,  # seconds from the app's first step to its answer; then 504 (0: none)
    "idle_timeout": 60.0,  # seconds a connection may send nothing before it is closed
    "receive_timeout": 900.0,  # seconds from connect (or the last answer) to a request's last body byte; then 408
    "max_connections": 1000,  # held at once; at the cap the oldest idle connection is closed (0: none)
    "max_connections_per_address": 256,  # the same, per client address (0: none)
    "shutdown_grace": 30.0,  # seconds SIGTERM waits for requests in progress before exiting
}


class _DaemonThread(threading.Thread):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.daemon = True


class WorkerPool(ThreadPool):
    """Daemon threads, so an app stuck past every limit cannot keep a stopping process alive."""

    threadFactory = _DaemonThread


class TomaatService(Daemon):
    """Serve an app: `TomaatService(config, app, input_interface, output_interface).run()`.

    Interfaces and metadata default to the app's class attributes, so a
    subclassed app needs only `TomaatService(app=MyApp()).run()`.
    """

    log = log

    def __init__(self, config=None, app=None, input_interface=None, output_interface=None, *, reactor=None, **options):
        if not isinstance(app, TomaatApp):
            raise TypeError(f"TomaatService needs a TomaatApp instance as app, got {type(app).__name__}")
        self.app = app
        self.config = {**DEFAULTS, **{key: getattr(self.app, key) for key in METADATA}, **(config or {}), **options}
        self.input_interface = elements.input_interface(input_interface or app.input_interface)
        self.output_interface = elements.output_interface(output_interface or app.output_interface)
        if not self.input_interface:
            raise ValueError("the service has no input interface: declare input_interface on the app or pass one")
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.pool = WorkerPool(minthreads=0, maxthreads=int(self.config["threads"]), name="tomaat-worker")
        self.pipeline = Pipeline(
            self.app,
            self.input_interface,
            self.output_interface,
        )
        self.worker = Worker(
            reactor, self.pool, self.pipeline, float(self.config["app_timeout"]), int(self.config["max_queue"])
        )
        self.budget = Budget(int(self.config["max_pending_bytes"]))
        self.metrics = Metrics(self.worker, self.budget)
        self.worker.observers.append(self.metrics.observe)
        self.delayed = DelayedResults(
            reactor,
            float(self.config["response_ttl"]),
            int(self.config["max_delayed_results"]),
            int(self.config["max_delayed_bytes"]),
        )
        self.announcer = None
        self.fingerprint = None
        self.port = None
        if self.config["announce"] is True:
            raise ValueError("'announce' needs the registry's URL (e.g. https://registry:8001), not True")
        if self.config["announce"] and not str(self.config["api_key"]).strip():
            raise ValueError("announcing needs an api_key from the registry's operator")

    @property
    def limits(self) -> Limits:
        names = ("max_voxels", "max_decoded_bytes", "max_points", "max_transform_parameters")
        return Limits(**{name: int(self.config[name]) for name in names})

    @property
    def announced_at(self) -> str:
        return self.announcer.announced_at if self.announcer else ""

    @property
    def upload_limit(self) -> int:
        """The largest body accepted: a body larger than the pending budget could never be taken in."""
        limit, pending = int(self.config["max_body_bytes"]), int(self.config["max_pending_bytes"])
        return min(limit, pending) if pending else limit

    @property
    def delayed_responses(self) -> bool:
        return bool(self.config["delayed_responses"])

    def info(self) -> dict:
        info = {key: str(self.config.get(key, "")) for key in METADATA}
        info.update(
            input_interface=[e.to_dict() for e in self.input_interface],
            output_interface=[e.to_output_dict() for e in self.output_interface],
            protocol=PROTOCOL_VERSION,
            max_upload_bytes=self.upload_limit,
            max_voxels=int(self.config["max_voxels"]),
            max_decoded_bytes=int(self.config["max_decoded_bytes"]),
            max_points=int(self.config["max_points"]),
            max_transform_parameters=int(self.config["max_transform_parameters"]),
            tls_fingerprint=self.fingerprint,
        )
        return info

    def health(self) -> dict:
        return {
            "status": "ok",
            "queue": self.worker.queued,
            "in_flight": self.worker.in_flight,
            "delayed_results": len(self.delayed),
            "version": str(self.config.get("version", "")),
        }

    @property
    def public_url(self) -> str:
        """Where clients reach this service: configured, never guessed from an outside service."""
        if self.config["host"]:
            return str(self.config["host"]).rstrip("/")
        scheme = "https" if self.config["tls"] else "http"
        return f"{scheme}://{socket.getfqdn()}:{self.port.getHost().port}"

    def _start_announcing(self) -> None:
        public = self.public_url
        if not self.config["host"]:
            log.info("announcing as %s (set the public URL to change it)", public)
        payload = {key: str(self.config.get(key, "")) for key in ("name", "modality", "anatomy", "task", "description")}
        payload.update(prediction_url=public + "/predict", interface_url=public + "/interface")
        pin = self.config["registry_fingerprint"]
        self.announcer = Announcer(
            self.reactor,
            str(self.config["announce"]),
            str(self.config["api_key"]),
            payload,
            period=float(self.config["announce_period"]),
            tls=pin_fingerprint(pin) if pin else None,
        )
        self.announcer.start()

    async def listen(self):
        """Start the pool and the port (port 0 picks a free one); returns the listening port."""
        endpoint = self._endpoint()
        scratch.remove_orphans()
        # the configuration is final here: `tomaat serve` may update a service built in the app's module
        self.pipeline.max_fields = int(self.config["max_fields"])
        self.pipeline.limits = self.limits
        self.pipeline.decoded = Budget(int(self.config["max_decoded_total"]))
        confined.POOL.configure(
            int(self.config["decoders"]), int(self.config["decoder_memory"]), float(self.config["decode_timeout"])
        )
        self.pool.start()
        connections = web.Connections(
            int(self.config["max_connections"]), int(self.config["max_connections_per_address"])
        )
        site = web.make_site(
            PredictionRoutes(self).app.resource(), self.upload_limit, budget=self.budget, connections=connections
        )
        site.timeOut = float(self.config["idle_timeout"]) or None
        site.receive_timeout = float(self.config["receive_timeout"]) or None
        try:
            self.port = await endpoint.listen(site)
        except Exception:
            self.pool.stop()
            raise
        if self.config["announce"]:
            self._start_announcing()
        return self.port

    async def stop(self):
        if self.announcer is not None:
            await self.announcer.stop()  # withdraw while still serving, never raises
            self.announcer = None
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        if await self._drain(float(self.config["shutdown_grace"])):
            self.pool.stop()
        else:
            log.warning(
                "stopping with %d request(s) still running after shutdown_grace; they are abandoned",
                self.worker.in_flight + self.worker.queued,
            )
        self.delayed.clear()

    async def _drain(self, grace: float) -> bool:
        """Wait until every accepted request is answered and written, or grace runs out; whether it was."""
        deadline = time.monotonic() + grace
        while self.worker.busy and time.monotonic() < deadline:
            await task.deferLater(self.reactor, 0.05, lambda: None)
        if self.worker.busy:
            return False
        await task.deferLater(self.reactor, 0.05, lambda: None)  # one more turn: answers leave the write buffers
        return True

    def advice(self) -> list[str]:
        lines = []
        if not self.config["tls"]:
            lines.append(
                "TOMAAT-Slicer does not connect to plain-HTTP prediction servers: serve HTTPS (the default) for Slicer"
            )
        return lines

    def started_message(self) -> str:
        message = f"{self.config['name']} serving on {self.url} ({self.config['threads']} worker threads)"
        if self.app.data_contract == UPSTREAM:
            message += "; its steps get upstream TOMAAT's data: one-item lists, volumes and transforms as file paths"
        return message

    def run(self) -> None:
        """Serve until interrupted; inside `tomaat serve`'s import of an upstream-style file, only say it is ready,
        so `tomaat serve` can serve it with its own options."""
        loading = _LOADING.get()
        if loading is not None:
            loading.append(self)
            return
        super().run()


class TomaatServiceDelayedResponse(TomaatService):
    """Upstream's name for a service that answers every prediction with a DelayedResponse (`delayed_responses`)."""

    def __init__(self, config=None, app=None, input_interface=None, output_interface=None, **kwargs):
        super().__init__(
            {**(config or {}), "delayed_responses": True}, app, input_interface, output_interface, **kwargs
        )


@contextlib.contextmanager
def deferred_runs():
    """While a module is imported for `tomaat serve`, its `service.run()` returns at once; the services it ran."""
    ran: list = []
    token = _LOADING.set(ran)
    try:
        yield ran
    finally:
        _LOADING.reset(token)
