"""The app's three steps in Ray Serve replicas, for a service that outgrows one GPU or one machine.

The Twisted front end keeps everything else (HTTP, limits, parsing, decoding, validation, encoding,
metrics, announcing); `RayRunner` puts the decoded `data` into Ray's object store once and hands its
reference to a replica, which runs preprocess, inference and postprocess (each replica loads the app
once, on its own GPU, and batches concurrent requests itself when the app asks: runners.py). A replica
or node lost mid-request is retried once on another replica; a second loss is a clean 503.

Security (docs/security.md): the cluster is always run with Ray's token authentication. A local
instance gets a fresh random token, known only to this process and the Ray processes it starts; a
cluster is joined only with a token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH). Ray 2.60 binds its GCS,
raylet and object manager to every interface whatever node address it is given, so the token (and,
on a cluster, a firewall or NetworkPolicy) is what keeps others out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..errors import AppTimeout, ServiceError
from .batching import Batcher

log = logging.getLogger("tomaat.server")

APPLICATION = "tomaat"
STATUS_PERIOD = 2.0  # seconds between looks at the replicas, for /health and /info
SHUTDOWN_TIMEOUT = 60.0  # Serve drains its replicas (graceful_shutdown_timeout_s) before Ray stops
LOST = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "ObjectLostError", "OwnerDiedError")


class ReplicaLost(ServiceError):
    status = 503


@dataclass(frozen=True)
class RayOptions:
    """How `tomaat serve --ray` runs the steps; checked before Ray starts (seconds), so mistakes are quick."""

    address: str | None = None  # None: start a local Ray instance; else join this cluster
    replicas: int = 1
    min_replicas: int | None = None  # both given: autoscale between them instead of `replicas`
    max_replicas: int | None = None
    gpus_per_replica: float = 0.0
    node_ip: str = "127.0.0.2"  # a local instance's address (Ray rewrites 127.0.0.1 to the machine's own)
    num_cpus: int | None = None  # a local instance's CPUs (default: all)
    object_store_bytes: int | None = None  # a local instance's object store (default: Ray's)
    max_ongoing_requests: int = 8  # per replica: what it may batch or overlap

    def check(self) -> RayOptions:
        if self.replicas < 1:
            raise ValueError(f"--replicas {self.replicas}: expected at least 1")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("--min-replicas and --max-replicas go together")
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and not 0 <= self.min_replicas <= self.max_replicas >= 1
        ):
            raise ValueError(
                f"--min-replicas {self.min_replicas} --max-replicas {self.max_replicas}: expected 0 <= min <= max, max >= 1"
            )
        if not self.gpus_per_replica >= 0:
            raise ValueError(f"--gpus-per-replica {self.gpus_per_replica}: expected 0 or more")
        return self

    def deployment(self) -> dict:
        """Serve's deployment options."""
        options = {
            "ray_actor_options": {
                "num_gpus": self.gpus_per_replica,
                "num_cpus": 0.5 if not self.gpus_per_replica else 1,
            },
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": 2.0,
            "health_check_timeout_s": 10.0,
            "graceful_shutdown_timeout_s": 5.0,
        }
        if self.min_replicas is not None:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": max(1, self.max_ongoing_requests // 2),
            }
        else:
            options["num_replicas"] = self.replicas
        return options

    def describe(self) -> dict:
        wanted = (
            {"min": self.min_replicas, "max": self.max_replicas} if self.min_replicas is not None else self.replicas
        )
        return {
            "engine": "ray",
            "cluster": self.address or "local",
            "wanted": wanted,
            "gpus_per_replica": self.gpus_per_replica,
        }


def start_ray(options: RayOptions) -> None:
    """Ray with token authentication, local or joined; the token never leaves this process's environment."""
    import sys

    os.environ["RAY_AUTH_MODE"] = "token"  # read when Ray loads: set before the import
    if options.address is None:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # for this process and the Ray processes it starts
    if "ray" in sys.modules:  # imported already (by the app?): make it read the settings again
        from ray._raylet import Config  # type: ignore[attr-defined]  # a compiled module: mypy sees no names in it

        Config.initialize("")
    import ray

    if options.address is None:
        ray.init(
            address="local",  # a new instance, never one found running on this machine
            # Ray's own sockets and logs: not under TMPDIR, whose path can pass the 107 bytes a socket's may have
            _temp_dir=os.environ.get("RAY_TMPDIR") or "/tmp/ray",
            _node_ip_address=options.node_ip,
            num_cpus=options.num_cpus,
            object_store_memory=options.object_store_bytes,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            raise RuntimeError(
                f"--ray {options.address}: joining a Ray cluster needs its token, in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                "(the cluster must run with RAY_AUTH_MODE=token; docs/security.md)"
            )
        ray.init(address=options.address, log_to_driver=False, configure_logging=False)


class _Image:
    """A SimpleITK image as Ray carries it best: its voxels as a NumPy view (one copy, into the object store,
    where replicas on the node read it without another) and its geometry. SimpleITK's own pickling copies
    the voxels once more on each side.

    The view does not own its memory: SimpleITK frees the voxels with the image. So the image itself is
    kept here until the view has been serialized. Without it, a replica's answer was pickled after
    `run` had returned and dropped the label image, and the allocator's bookkeeping overwrote the label's
    first voxels (issue 22). Only the view and the geometry are pickled."""

    __slots__ = ("voxels", "vector", "spacing", "origin", "direction", "_owner")

    def __init__(self, voxels, vector: bool, spacing: tuple, origin: tuple, direction: tuple, owner=None):
        self.voxels, self.vector = voxels, vector
        self.spacing, self.origin, self.direction = spacing, origin, direction
        self._owner = owner  # the image whose buffer `voxels` views, kept alive as long as this is

    def __reduce__(self):
        return _Image, (self.voxels, self.vector, self.spacing, self.origin, self.direction)

    @classmethod
    def of(cls, image):
        import SimpleITK as sitk

        vector = image.GetNumberOfComponentsPerPixel() > 1
        geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        return cls(sitk.GetArrayViewFromImage(image), vector, *geometry, owner=image)

    def image(self):
        """A SimpleITK image of its own (GetImageFromArray copies), so nothing refers to Ray's buffer after."""
        import SimpleITK as sitk

        made = sitk.GetImageFromArray(self.voxels, isVector=self.vector)
        made.SetSpacing(self.spacing)
        made.SetOrigin(self.origin)
        made.SetDirection(self.direction)
        return made


def _packed(data: dict) -> dict:
    import SimpleITK as sitk

    return {key: _Image.of(value) if isinstance(value, sitk.Image) else value for key, value in data.items()}


def _unpacked(data: dict) -> dict:
    return {key: value.image() if isinstance(value, _Image) else value for key, value in data.items()}


class Replica:
    """One Serve replica: the app loaded once from its file or module, its steps run as this process would."""

    def __init__(self, target: str, device: str, gpus: float):
        from .loader import load
        from .runners import local_runner
        from .service import TomaatService

        found = load(target)
        service = found if isinstance(found, TomaatService) else None
        self.app = service.app if service else found
        outputs = service.output_interface if service else self.app.output_interface
        self.fields = tuple(element.field for element in outputs)  # what goes back: the outputs, not all of data
        self.app.setup("cuda" if gpus and device == "auto" else device)
        self.runner = local_runner(self.app)
        self.pid = os.getpid()

    async def run(self, data: dict) -> tuple[dict, dict, int]:
        """(the outputs' values, seconds per stage, this replica's pid), off Serve's event loop.

        Only the output fields travel back: `data` also holds the input volume and whatever the
        steps left in it, often several times the outputs' size."""
        from .timings import Timings, Watch

        timings = Timings()
        done = await asyncio.to_thread(self.runner, _unpacked(data), timings, Watch())
        return _packed({key: done[key] for key in self.fields if key in done}), dict(timings), self.pid


class RayRunner:
    """The runner of a service whose steps run in Ray Serve replicas (see the module's docstring).

    Each replica batches its own concurrent requests (max_ongoing_requests); none are batched here."""

    max_batch = 1
    batcher: Batcher | None = None

    def __init__(self, target: str, options: RayOptions, device: str = "auto", timeout: float = 0.0):
        self.target, self.options, self.device = target, options.check(), device
        self.timeout = float(timeout or 0) or None
        self.handle: Any = None  # Serve's DeploymentHandle, once set up
        self._status: dict = {"running": 0, "state": "starting"}
        self._stop = threading.Event()
        self._local = options.address is None
        self._attached = False  # steps deployed by the cluster, not by this front end: left running at exit
        self._owner: threading.Thread | None = None  # started Ray, stops it (setup's docstring says why)

    def setup(self, device: str) -> None:
        """Start or join Ray and deploy the replicas: seconds, before the port opens.

        Ray is started from a thread of this object's own that lives until close(), never from the calling
        worker: a local instance's GCS and raylet die with the *thread* that started them (Ray sets
        PR_SET_PDEATHSIG, which Linux ties to the creating thread). Started from a pool thread, they were
        killed when the pool stopped at shutdown, before close() could stop Serve: close() then hung until
        Ray aborted the process, and the raylet's agents were left running (issue 22)."""
        self.device = device or self.device
        ready: Future = Future()
        self._owner = threading.Thread(target=self._own, args=(ready,), name="tomaat-ray", daemon=True)
        self._owner.start()
        ready.result()
        threading.Thread(target=self._watch, name="tomaat-ray-status", daemon=True).start()

    def _own(self, ready: Future) -> None:
        try:
            self._start()
        except BaseException as error:  # noqa: BLE001 - handed to setup()'s caller
            ready.set_exception(error)
            return
        ready.set_result(None)
        self._stop.wait()
        self._shut_down()

    def _start(self) -> None:
        from ray import serve

        started = time.monotonic()
        start_ray(self.options)
        if self.options.address is not None and APPLICATION in serve.status().applications:
            # the cluster runs the steps already (a KubeRay RayService's serveConfigV2, build_app below): use them
            self.handle = serve.get_app_handle(APPLICATION)
            self._attached = True
            log.info("Ray Serve: using the application %r the cluster runs; --replicas is the cluster's", APPLICATION)
        else:
            serve.start(proxy_location="Disabled")  # the front end is the only way in: Serve's own HTTP stays off
            deployment = serve.deployment(name="steps", **self.options.deployment())(Replica)
            bound = deployment.bind(self.target, self.device, self.options.gpus_per_replica)
            self.handle = serve.run(bound, name=APPLICATION, route_prefix=None, blocking=False)
        self._refresh()
        log.info(
            "Ray Serve: %s replica(s) running on %s, in %.1f s",
            self._status["running"], self.options.address or f"a local instance at {self.options.node_ip}",
            time.monotonic() - started,
        )  # fmt: skip

    def _refresh(self) -> None:
        from ray import serve

        try:
            application = serve.status().applications.get(APPLICATION)
            states: dict[str, int] = {}
            if application is not None:
                for deployment in application.deployments.values():
                    for state, count in deployment.replica_states.items():
                        states[str(state)] = states.get(str(state), 0) + count
            self._status = {"running": states.get("RUNNING", 0), "replica_states": states,
                            "state": str(application.status) if application else "missing"}  # fmt: skip
        except Exception as error:  # noqa: BLE001 - the cluster unreachable is a state to report, not a crash
            self._status = {"running": 0, "state": f"unreachable ({type(error).__name__})"}

    def _watch(self) -> None:
        while not self._stop.wait(STATUS_PERIOD):
            self._refresh()

    def describe(self) -> dict:
        """For /health and /info: read from the last look, since the reactor must not wait on the cluster."""
        return {**self.options.describe(), "replicas": dict(self._status)}

    def __call__(self, data: dict, timings, watch) -> dict:
        import ray

        watch.app_started()
        with timings.stage("ray_put"):
            reference = ray.put(_packed(data))  # once: a retry sends the same object
        del data
        for attempt in (1, 2):
            began = time.perf_counter()
            response = self.handle.run.remote(reference)
            try:
                done, stages, pid = response.result(timeout_s=self.timeout)
            except TimeoutError:
                response.cancel()
                raise AppTimeout("the service ran past its time limit in its replica") from None
            except Exception as error:  # noqa: BLE001 - sorted below: lost replicas, or the app's own failure
                if type(error).__name__ in LOST or _lost(error):
                    log.warning("a replica was lost during a request (%s), attempt %d", type(error).__name__, attempt)
                    if attempt == 1:
                        continue
                    raise ReplicaLost(
                        "the service lost the replica working on this request twice (a node or process failed); "
                        "try again shortly"
                    ) from None
                cause = getattr(error, "cause", None)
                if isinstance(cause, ServiceError):
                    raise cause from None  # the app's failure, as the local steps report it (AppFailure, 500)
                log.error("the replica failed: %s", error)
                raise ReplicaLost("the service's replicas could not run this request; try again shortly") from None
            done = _unpacked(done)
            for stage, seconds in stages.items():
                timings[stage] = timings.get(stage, 0.0) + float(seconds)
            timings["ray"] = timings.get("ray", 0.0) + time.perf_counter() - began - sum(stages.values())
            log.debug("request ran in replica pid %s", pid)
            watch.check("postprocess")
            return done
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop Serve and Ray on the thread that started them, and wait (bounded) until they are gone."""
        self._stop.set()
        if self._owner is not None:
            self._owner.join(SHUTDOWN_TIMEOUT)
            if self._owner.is_alive():
                log.warning("Ray did not shut down within %g s", SHUTDOWN_TIMEOUT)

    def _shut_down(self) -> None:
        try:
            import ray
            from ray import serve

            if ray.is_initialized() and not self._attached:
                serve.delete(APPLICATION)
                if self._local:
                    serve.shutdown()
                ray.shutdown()
        except Exception:  # noqa: BLE001 - stopping: a cluster gone already is fine
            log.debug("Ray shutdown", exc_info=True)


def build_app(args: dict):
    """The steps as a Serve application, for a cluster that runs them itself: a KubeRay RayService names
    `tomaat.server.ray_runner:build_app` in its serveConfigV2, with args {"app": "/app/my_app.py"} (the file or
    module, as `tomaat serve` takes it), optionally "device" and "gpus"; replicas and GPUs per replica come
    from its deployments section. Front ends started with `--ray ADDRESS` find it and use it."""
    from ray import serve

    target = str(args["app"])
    gpus = float(args.get("gpus", 0))
    options = RayOptions(gpus_per_replica=gpus).deployment()
    options.pop("num_replicas", None)
    return serve.deployment(name="steps", **options)(Replica).bind(target, str(args.get("device", "auto")), gpus)


def _lost(error: Exception) -> bool:
    """Whether a Serve error means the replica (or its node) went away, rather than the app failing."""
    cause = getattr(error, "cause", None)
    return cause is not None and type(cause).__name__ in LOST
