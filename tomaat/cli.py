"""The `tomaat` command line (click): serving now, client commands beside it later."""

from __future__ import annotations

import click

from .protocol.elements import InterfaceError
from .server.loader import LoadError, load, split_spec
from .server.service import DEFAULTS, TomaatService


@click.group()
@click.version_option(package_name="tomaat")
def main():
    """TOMAAT: volumetric medical image analysis as a network service."""


@main.command()
@click.argument("target", metavar="FILE_OR_MODULE[:NAME]")
@click.option("--port", type=int, default=None, help="Port to listen on (default 9000 or the app's config).")
@click.option("--host", "interface", default=None, help="Address to listen on (default 0.0.0.0).")
@click.option("--no-tls", is_flag=True, help="Serve plain HTTP instead of HTTPS.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate (default: self-signed).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="PEM private key for --cert.")
@click.option("--threads", type=int, default=None, help=f"Worker threads (default {DEFAULTS.threads}).")
@click.option("--device", default=None, help="Handed to the app's setup(), e.g. cuda:1 or cpu (default: auto).")
@click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None, help="Where the generated certificate is kept."
)
@click.option(
    "--delayed", is_flag=True, help="Answer every prediction with a DelayedResponse (collect via /responses)."
)
@click.option("--response-ttl", type=float, default=None, help="Seconds an uncollected delayed result is kept.")
@click.option(
    "--volume-ttl", type=float, default=None,
    help=f"Seconds a stored volume (POST /volumes) is kept after its last use; 0: no store (default {DEFAULTS.volume_ttl:g}).",
)  # fmt: skip
@click.option(
    "--max-stored-bytes", type=int, default=None, help="Most decoded bytes of stored volumes, then 507 (2 GiB)."
)
@click.option("--max-stored-volumes", type=int, default=None, help="Most stored volumes at once, then 507 (256).")
@click.option("--announce", "registry", metavar="REGISTRY_URL", help="Announce this service to a registry.")
@click.option(
    "--api-key-file", type=click.File("r"), help="File holding the registry API key (needed with --announce)."
)
@click.option("--public-url", help="Base URL clients reach this service at, as announced (default: this host's name).")
@click.option("--registry-fingerprint", help="Trust an https registry whose certificate has this SHA-256 fingerprint.")
@click.option("--announce-period", type=float, default=None, help="Seconds between re-announcements (default 1600).")
@click.option("--max-body-bytes", type=int, default=None, help="Largest request body (default 2 GiB); else 413.")
@click.option("--max-voxels", type=int, default=None, help="Largest image, read from its header (default 1024^3).")
@click.option("--max-decoded-bytes", type=int, default=None, help="Most bytes one request's inputs decode to (4 GiB).")
@click.option("--max-decoded-total", type=int, default=None, help="Most decoded bytes of all requests at once (8 GiB).")
@click.option("--max-points", type=int, default=None, help="Most points per fiducials input (default 100000).")
@click.option("--max-transform-parameters", type=int, default=None, help="Most parameters per transform (10^7).")
@click.option("--decoders", type=int, default=None, help="Confined processes decoding NIfTI, NRRD, transforms (2).")
@click.option("--max-connections", type=int, default=None, help="Connections held at once (default 1000).")
@click.option("--max-connections-per-address", type=int, default=None, help="Per client address (default 256).")
@click.option("--max-fields", type=int, default=None, help="Most form fields per request (default 256).")
@click.option("--max-queue", type=int, default=None, help="Most requests waiting for a thread, then 503 (default 64).")
@click.option(
    "--max-pending-bytes", type=int, default=None, help="Most body bytes held at once, then 503 (default 4 GiB)."
)
@click.option("--app-timeout", type=float, default=None, help="Seconds the app may run before a 504 (default 600).")
@click.option("--idle-timeout", type=float, default=None, help="Seconds a silent connection is kept (default 60).")
@click.option("--receive-timeout", type=float, default=None, help="Seconds to receive one request (default 900).")
@click.option("--shutdown-grace", type=float, default=None, help="Seconds SIGTERM waits for requests (default 30).")
@click.option(
    "--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
    help="Run the app's steps in Ray Serve replicas: a local Ray instance, or the cluster at ADDRESS (docs/scaling.md).",
)  # fmt: skip
@click.option("--replicas", type=int, default=None, help="Replicas with --ray (default 1).")
@click.option("--min-replicas", type=int, default=None, help="Autoscale with --ray from this many replicas...")
@click.option("--max-replicas", type=int, default=None, help="...to this many.")
@click.option("--gpus-per-replica", type=float, default=None, help="GPUs each replica holds with --ray (default 0).")
@click.option("--ray-node-ip", default=None, help="A local Ray instance's address (default 127.0.0.2).")
@click.option("--ray-cpus", type=int, default=None, help="CPUs a local Ray instance may use (default: all).")
def serve(target, port, interface, no_tls, cert, key, threads, device, state_dir, delayed, response_ttl, **announcing):
    """Serve the app defined in FILE_OR_MODULE (a TomaatApp, a subclass, or a TomaatService)."""
    if bool(cert) != bool(key):
        raise click.UsageError("--cert and --key go together")
    if bool(announcing["registry"]) != bool(announcing["api_key_file"]):
        raise click.UsageError("--announce and --api-key-file go together")
    options = {
        "port": port,
        "listen_address": interface,
        "threads": threads,
        "device": device,
        "state_dir": state_dir,
        "response_ttl": response_ttl,
        "cert": cert,
        "key": key,
        "announce": announcing["registry"],
        "api_key": announcing["api_key_file"].read().strip() if announcing["api_key_file"] else None,
        "public_url": announcing["public_url"],
        "registry_fingerprint": announcing["registry_fingerprint"],
        "announce_period": announcing["announce_period"],
    }
    limits: tuple[str, ...] = ("max_body_bytes", "max_voxels", "max_fields", "max_queue", "max_pending_bytes")
    limits += ("decoders", "max_connections", "max_connections_per_address")
    limits += ("max_decoded_bytes", "max_decoded_total", "max_points", "max_transform_parameters")
    limits += ("app_timeout", "idle_timeout", "receive_timeout", "shutdown_grace")
    limits += ("volume_ttl", "max_stored_bytes", "max_stored_volumes")
    options.update({name: announcing[name] for name in limits})
    options = {k: v for k, v in options.items() if v is not None}
    if no_tls:
        options["tls"] = False
    if delayed:
        options["delayed_responses"] = True
    ray = {name: announcing.pop(name) for name in RAY_OPTIONS}
    service = _service(target, options)
    if ray["ray_address"] is not None:
        _on_ray(service, target, ray)
    elif any(value is not None for value in ray.values()):
        raise click.UsageError("--replicas, --min/--max-replicas, --gpus-per-replica and --ray-* need --ray")
    service.run()


RAY_OPTIONS = ("ray_address", "replicas", "min_replicas", "max_replicas", "gpus_per_replica", "ray_node_ip", "ray_cpus")


def _on_ray(service: TomaatService, target: str, ray: dict) -> None:
    """The service's steps in Ray Serve replicas, each of which loads TARGET itself (so it must exist there too)."""
    import os

    from .server.ray_steps import RayOptions, RaySteps

    path, name = split_spec(target)
    where = (os.path.abspath(path) if os.path.exists(path) else path) + (f":{name}" if name else "")
    given = {
        "address": None if ray["ray_address"] == "local" else ray["ray_address"],
        "replicas": ray["replicas"],
        "min_replicas": ray["min_replicas"],
        "max_replicas": ray["max_replicas"],
        "gpus_per_replica": ray["gpus_per_replica"],
        "node_ip": ray["ray_node_ip"],
        "num_cpus": ray["ray_cpus"],
    }
    try:
        options = RayOptions(**{k: v for k, v in given.items() if v is not None}).check()
        service.run_steps_on(RaySteps(where, options, timeout=service.config.app_timeout))
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def _service(target: str, options: dict) -> TomaatService:
    """The service that TARGET defines or whose app it defines, with the command line's options over its config."""
    try:
        found = load(target)
        if isinstance(found, TomaatService):
            found.configure(**options)
            return found
        return TomaatService(app=found, **options)
    except (LoadError, InterfaceError, TypeError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.argument("target", metavar="FILE_OR_MODULE[:NAME]")
@click.option("--device", default=None, help="Handed to the app's setup() (default: auto).")
def check(target, device):
    """Run one request made of the interface's defaults and a generated phantom through the app, with no server."""
    from .net.daemon import log_to_stdlib
    from .server.check import check as run_check

    log_to_stdlib()
    passed, lines = run_check(_service(target, {"device": device} if device else {}))
    for line in lines:
        click.echo(line)
    click.echo("check passed" if passed else "check FAILED")
    raise SystemExit(0 if passed else 1)


# ---- client commands (tomaat/client/cli.py): discover, interface, predict ------------------------
from .client.cli import COMMANDS as _CLIENT_COMMANDS  # noqa: E402

for _command in _CLIENT_COMMANDS:
    main.add_command(_command)

# ---- the PACS loop (tomaat/dicom/cli.py): dicomweb predict -----------------------------------------
from .dicom.cli import dicomweb as _dicomweb  # noqa: E402

main.add_command(_dicomweb)
