"""A running prediction endpoint: configuration, thread pool, TLS and the listening port.

Everything is per instance, so tests and operators can run several services
in one process; only the GPU lock is shared, because the GPU is.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import signal
import socket
import threading
import time

from twisted.internet import task
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..access.gate import Access
from ..access.identity import PREDICT
from ..access.network import parse_networks
from ..access.shares import Shares
from ..access.tokens import TokenStore
from ..files import confined, scratch
from ..files.limits import Limits
from ..net import web
from ..net.body import Budget
from ..net.daemon import Daemon
from ..net.trust import pin_fingerprint
from ..protocol import elements
from ..protocol import metadata as model_metadata
from ..protocol.registry import announcement_body
from . import page
from .announcer import Announcer
from .app import UPSTREAM, TomaatApp, batch_settings
from .audit_trail import Recorder
from .config import DESCRIPTION, ServiceConfig, described, scope_list
from .delayed import DelayedResults
from .form import delimiter_of
from .metrics import Metrics
from .prediction import Prediction
from .routes import PredictionRoutes
from .runners import Runner, local_runner
from .volume_store import StoredVolumes
from .worker import Worker

log = logging.getLogger("tomaat.server")

_LOADING: contextvars.ContextVar[list | None] = contextvars.ContextVar("tomaat_loading", default=None)
PROTOCOL_VERSION = 2
# The scope each body-taking route needs, for refusing before the body is read (the routes check it again).
ROUTE_SCOPES = {
    (b"POST", b"/predict"): "predict",
    (b"POST", b"/volumes"): "predict",
    (b"POST", b"/responses"): "predict",
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
        self.config = ServiceConfig.build(config, options)
        self.description = described(app, config, options)  # name, modality, ..., licence, accuracy
        self.model_metadata()  # refused here, not by the registry at every renewal
        batch_settings(app)  # max_batch and max_delay_ms, refused here rather than at the first request
        self.input_interface = elements.input_interface(input_interface or app.input_interface)
        self.output_interface = elements.output_interface(output_interface or app.output_interface)
        if not self.input_interface:
            raise ValueError("the service has no input interface: declare input_interface on the app or pass one")
        elements.check_grids(self.input_interface, self.output_interface)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.runner: Runner = local_runner(self.app)
        self.announcer = None
        self.fingerprint = None
        self.port = None
        self.stopped = False
        self._build()

    def _build(self) -> None:
        """The parts sized by the settings; rebuilt when `configure` changes them before the service starts."""
        config = self.config
        self.pool = WorkerPool(minthreads=0, maxthreads=config.threads, name="tomaat-worker")
        self.worker = Worker(self.reactor, self.pool, config.app_timeout, config.max_queue)
        self.budget = Budget(config.max_pending_bytes)
        self.delayed = DelayedResults(
            self.reactor, config.response_ttl, config.max_delayed_results, config.max_delayed_bytes
        )
        decoded = Budget(config.max_decoded_total)
        # the service's own decoder processes: a second service in the process has its own, with its own settings
        self.decoders = confined.DecoderPool(config.decoders, config.decoder_memory, config.decode_timeout)
        # stored volumes are decoded inputs kept for longer: charged to the same budget while held
        self.volumes = StoredVolumes(
            self.reactor,
            config.volume_ttl,
            config.max_stored_bytes,
            config.max_stored_volumes,
            self.limits,
            decoded,
            config.max_fields,
            self.decoders,
        )
        self.prediction = Prediction(
            self.app, self.input_interface, self.output_interface, self.runner, config.max_fields, self.limits,
            decoded, self.volumes, self.decoders,
        )  # fmt: skip
        self.metrics = Metrics(self.worker, self.budget, self.runner.batcher, volumes=self.volumes)
        self.worker.observers.append(self.metrics.observe)
        self.access = self._access()
        self.shares = Shares()
        self.recorder: Recorder | None = None  # made when the service listens, if it keeps an audit log

    def _access(self) -> Access:
        """The access rules the settings and the state folder's tokens make (docs/security.md)."""
        config = self.config
        oidc = None
        if config.oidc_issuer:
            from ..access.oidc import OidcVerifier
            from ..net.http_client import HttpClient
            from ..net.trust import trust_certificate

            http = HttpClient(self.reactor, tls=trust_certificate(config.oidc_ca)) if config.oidc_ca else None
            oidc = OidcVerifier(
                self.reactor,
                issuer=config.oidc_issuer,
                audience=config.oidc_audience,
                jwks_url=config.oidc_jwks_url,
                roles_claim=config.oidc_roles_claim,
                http=http,
            )
        return Access(
            tokens=TokenStore(config.state_dir),
            oidc=oidc,
            certificates=bool(config.client_ca),
            certificate_scopes=scope_list(config.client_cert_scopes),
            networks=parse_networks([config.allow_from]),
            network_scopes=scope_list(config.network_scopes),
        )

    def scope_of(self, scope: str) -> str | None:
        """The scope a route needs now, None when it is open: /info's follow open_info, the others the rules."""
        if scope == "info":
            scope = PREDICT if not self.config.open_info else ""
        return scope if scope and scope in self.access.required() else None

    def share_cap(self) -> int:
        """Requests one identity may have in flight and queued (max_per_identity). By default, once identities are
        checked, one fewer than the worker threads, so that no identity holds them all and another's request
        starts at once; none on an open server, where everyone is one identity."""
        cap = self.config.max_per_identity
        if cap is None:
            return max(1, self.config.threads - 1) if self.access.required() else 0
        return cap

    def configure(self, **changes) -> None:
        """New settings over the current ones (what `tomaat serve`'s options do to a service a file built)."""
        if self.port is not None:
            raise RuntimeError("a service's settings are fixed once it listens")
        self.config = self.config.replace(**{k: v for k, v in changes.items() if v is not None})
        self.description.update(described(self.app, changes))
        self._build()

    @property
    def limits(self) -> Limits:
        config = self.config
        return Limits(config.max_voxels, config.max_decoded_bytes, config.max_points, config.max_transform_parameters)

    @property
    def announced_at(self) -> str:
        return self.announcer.announced_at if self.announcer else ""

    @property
    def upload_limit(self) -> int:
        return self.config.upload_limit

    @property
    def delayed_responses(self) -> bool:
        return self.config.delayed_responses

    def model_metadata(self) -> dict:
        """Licence, citation, accuracy, ...: checked, so that a registry would never refuse them."""
        stated = {key: self.description[key] for key in model_metadata.FIELDS if self.description.get(key) is not None}
        stated["version"] = str(self.description.get("version", ""))  # as /info has always shown it
        return model_metadata.check(stated, "the service's")

    def info(self) -> dict:
        config = self.config
        info: dict = {key: str(self.description.get(key, "")) for key in DESCRIPTION}
        info.update(self.model_metadata())
        info.update(
            input_interface=[e.to_dict() for e in self.input_interface],
            output_interface=[e.to_output_dict() for e in self.output_interface],
            protocol=PROTOCOL_VERSION,
            max_upload_bytes=self.upload_limit,
            max_voxels=config.max_voxels,
            max_decoded_bytes=config.max_decoded_bytes,
            max_points=config.max_points,
            max_transform_parameters=config.max_transform_parameters,
            tls_fingerprint=self.fingerprint,
            steps=self.runner.describe(),
            volume_store=self.volumes.describe(),
            binary_answers=True,
        )
        access = self.access.describe()
        if access["methods"]:  # an open server's /info is as it was
            info["access"] = access
        return info

    def health(self) -> dict:
        return {
            "status": "ok",
            "queue": self.worker.queued,
            "in_flight": self.worker.in_flight,
            "delayed_results": len(self.delayed),
            "stored_volumes": len(self.volumes),
            "version": str(self.description.get("version", "")),
            "steps": self.runner.describe(),
        }

    @property
    def public_url(self) -> str:
        """Where clients reach this service: configured, never guessed from an outside service."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        scheme = "https" if self.config.tls else "http"
        assert self.port is not None, "a service announces only once it listens"
        return f"{scheme}://{socket.getfqdn()}:{self.port.getHost().port}"

    def _start_announcing(self) -> None:
        config, public = self.config, self.public_url
        if not config.public_url:
            log.info("announcing as %s (set the public URL to change it)", public)
        payload = announcement_body(public, self.description, self.model_metadata(), self.access.methods() or None)
        pin = config.registry_fingerprint
        self.announcer = Announcer(
            self.reactor,
            config.announce,
            config.api_key,
            payload,
            period=config.announce_period,
            tls=pin_fingerprint(pin) if pin else None,
        )
        self.announcer.start()

    async def listen(self):
        """Start the pool and the port (port 0 picks a free one); returns the listening port."""
        config = self.config
        endpoint = self._endpoint()
        scratch.remove_orphans()
        page.load()
        max_batch = self.runner.max_batch
        if max_batch > config.threads:
            log.warning(
                "the app's max_batch is %d but the service has %d worker threads, each holding one request: "
                "no batch can hold more than %d; raise --threads or lower max_batch",
                max_batch,
                config.threads,
                config.threads,
            )
        self.pool.start()
        # decoders start while the app sets up, so the first request finds them ready (files/confined.py)
        warming = deferToThreadPool(self.reactor, self.pool, self.decoders.warm, min(config.decoders, config.threads))
        try:
            await self._setup_app()
            await warming
            await self._start_access()
        except Exception:
            self.pool.stop()
            self.decoders.close()
            raise
        site = web.QuietSite(
            PredictionRoutes(self).app.resource(),
            max_body_bytes=self.upload_limit,
            receive_timeout=config.receive_timeout,
            idle_timeout=config.idle_timeout,
            budget=self.budget,
            connections=web.Connections(config.max_connections, config.max_connections_per_address),
            early_refusal=self._early_refusal,
            watch_for=_multipart_delimiter,
        )
        try:
            self.port = await endpoint.listen(site)
        except Exception:
            self.pool.stop()
            raise
        if config.announce:
            self._start_announcing()
        return self.port

    def run_on(self, runner: Runner) -> None:
        """Run the app's steps elsewhere (ray_runner.RayRunner): set before the service listens."""
        if self.port is not None:
            raise RuntimeError("where a service's steps run is fixed once it listens")
        if self.app.data_contract == UPSTREAM and any(
            e.wire_type in ("volume", "transform") for e in self.input_interface
        ):
            raise ValueError(
                "an app with upstream TOMAAT's data contract reads its volumes from files on this machine, which "
                "replicas elsewhere cannot open: give it our contract (contract='rich') to run it on Ray"
            )
        self.runner = runner
        self._build()

    async def _start_access(self) -> None:
        """The issuer's keys fetched and the audit log opened before the port opens."""
        if self.access.oidc is not None:
            await self.access.oidc.start()
        if self.config.audit_log:
            from ..access.audit import AuditLog

            audit_log = AuditLog(
                self.config.audit_log, fsync=self.config.audit_fsync, rotate_bytes=self.config.audit_rotate_bytes
            )
            audit_log.open()
            service = {
                "name": str(self.description.get("name", "")),
                "version": str(self.description.get("version", "")),
            }
            self.recorder = Recorder(audit_log, self.config.audit_required, self.reactor, self.pool, service)
            seq, head = audit_log.head
            log.info("audit log %s: record %d, chain head %s", self.config.audit_log, seq, head)

    def _early_refusal(self, request, method: bytes, path: bytes):
        """Before a body is read (net/web.py): a request its route's scope refuses at once, or None."""
        scope = ROUTE_SCOPES.get((method, path.split(b"?", 1)[0].rstrip(b"/")))
        if scope is None and method == b"DELETE" and path.startswith(b"/volumes/"):
            scope = "predict"
        if scope is None:
            return None
        scope = self.scope_of(scope)
        refusal = self.access.early(request, scope) if scope is not None else None
        if refusal is not None:
            route = f"{method.decode('latin-1')} {path.decode('latin-1')[:100]}"
            log.info("%s %d (before its body): %s", route, refusal.status, refusal.message)
            if self.recorder is not None:
                address = getattr(request.getClientAddress(), "host", "")
                record = {"identity": None, "method": None, "address": address, "route": route}
                self.recorder.record({**record, "status": refusal.status})
        return refusal

    async def _setup_app(self) -> None:
        """The app's setup() once (or the replicas' start), before the port opens, on a worker thread."""
        device = self.config.device
        try:
            await deferToThreadPool(self.reactor, self.pool, self.runner.setup, device)
        except Exception as error:
            log.exception("the app's setup(%r) failed", device)
            raise RuntimeError(f"the app's setup failed ({type(error).__name__}: {error})") from None
        _reclaim_sigterm()

    async def stop(self):
        if self.stopped:  # a test, then its fixture; a signal, then the reactor's shutdown
            return
        self.stopped = True
        if self.announcer is not None:
            await self.announcer.stop()  # withdraw while still serving, never raises
            self.announcer = None
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        drained = await self._drain(self.config.shutdown_grace)
        if self.recorder is not None:
            await self.recorder.drain()  # the last answers' records, written before the log is closed
        if drained:
            self.pool.stop()
        else:
            log.warning(
                "stopping with %d request(s) still running after shutdown_grace; they are abandoned",
                self.worker.in_flight + self.worker.queued,
            )
        self.delayed.clear()
        self.volumes.clear()
        self.decoders.close()
        self.runner.close()
        if self.access.oidc is not None:
            await self.access.oidc.stop()
            if self.access.oidc.http is not None and not self.access.oidc.owns_http:
                await self.access.oidc.http.close()
        if self.recorder is not None:
            seq, head = self.recorder.log.head
            log.info("audit log closed at record %d, chain head %s", seq, head)
            self.recorder.log.close()
            self.recorder = None

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
        if not self.access.required() and self.config.listen_address not in ("127.0.0.1", "::1", "localhost"):
            lines.append(
                "anyone who can reach this port may use this service: no access rule is set (tokens, OIDC, client "
                "certificates or allow_from; docs/security.md)"
            )
        if not self.config.tls:
            lines.append(
                "TOMAAT-Slicer does not connect to plain-HTTP prediction servers: serve HTTPS (the default) for Slicer"
            )
        return lines

    def started_message(self) -> str:
        message = f"{self.description.get('name', '')} serving on {self.url} ({self.config.threads} worker threads)"
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


def _reclaim_sigterm() -> None:
    """Put the process's own SIGTERM handler back in front, if a library's setup pushed in its own.

    Ray's core worker can install a C-level failure handler for SIGTERM (absl's: it logs "*** SIGTERM
    received" and ends the process seconds later, whatever the shutdown is doing); one `tomaat serve --ray`
    was seen aborted that way mid-shutdown. Python still knows its own handler (Twisted's); setting it
    again makes it the one the kernel calls. Only the main thread may.
    """
    if threading.current_thread() is threading.main_thread():
        handler = signal.getsignal(signal.SIGTERM)
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _multipart_delimiter(request) -> bytes | None:
    """What a request body is watched for as it arrives: its multipart delimiter (form.read_fields uses it)."""
    return delimiter_of(request.getHeader(b"content-type"))
