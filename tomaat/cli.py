"""The `tomaat` command line (click): serving now, client commands beside it later."""

from __future__ import annotations

import dataclasses
import typing

import click

from .config import option_help, refuse_host
from .protocol.elements import InterfaceError
from .server.app import TomaatApp
from .server.config import ServiceConfig
from .server.loader import LoadError, load, split_spec
from .server.service import TomaatService


@click.group()
@click.version_option(package_name="tomaat")
def main():
    """TOMAAT: volumetric medical image analysis as a network service."""


# The settings `tomaat serve` takes as plain options, `--max-queue N` for max_queue: each option's type, help and
# default are those the setting is declared with (server/config.py), so neither is written twice.
SETTINGS = (
    "port", "listen_address", "threads", "device", "response_ttl", "volume_ttl", "max_stored_bytes", "max_stored_volumes",
    "public_url", "registry_fingerprint", "announce_period", "max_body_bytes", "max_voxels", "max_decoded_bytes",
    "max_decoded_total", "max_points", "max_transform_parameters", "decoders", "max_connections",
    "max_connections_per_address", "max_fields", "max_queue", "max_pending_bytes", "app_timeout", "idle_timeout",
    "receive_timeout", "shutdown_grace",
    # who may use the service (docs/security.md)
    "client_ca", "client_cert_scopes", "oidc_issuer", "oidc_audience", "oidc_jwks_url", "oidc_ca", "oidc_roles_claim",
    "allow_from", "network_scopes", "max_per_identity", "audit_log", "audit_fsync", "audit_rotate_bytes",
)  # fmt: skip


def setting_options(config, names):
    """click options for these settings of a config class, typed and described from their declarations."""
    fields = {field.name: field for field in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)

    def decorate(function):
        for name in reversed(names):
            kind = next((a for a in typing.get_args(hints[name]) if a is not type(None)), hints[name])
            option = click.option(
                "--" + name.replace("_", "-"), name, type=kind if kind in (int, float) else str, default=None,
                help=option_help(fields[name]),
            )  # fmt: skip
            function = option(function)
        return function

    return decorate


@main.command()
@click.argument("target", metavar="FILE_OR_MODULE[:NAME]", required=False)
@click.option(
    "--nnunet", "nnunet_folder", type=click.Path(exists=True, file_okay=False), metavar="RESULTS_FOLDER",
    help="Serve a trained nnU-Net v2 folder (plans.json, dataset.json, fold_*) with nnU-Net's own inference.",
)  # fmt: skip
@click.option("--folds", default=None, help="With --nnunet: the folds to ensemble, e.g. 0,1,2 (default: all trained).")
@click.option(
    "--checkpoint", default=None, help="With --nnunet: the checkpoint's file name (default checkpoint_final.pth)."
)
@click.option(
    "--bundle", "bundle_folder", type=click.Path(exists=True, file_okay=False), metavar="BUNDLE_FOLDER",
    help="Serve a MONAI bundle (configs/inference.json, models/model.pt) with its own inference config.",
)  # fmt: skip
@click.option("--host", callback=refuse_host, expose_value=False, hidden=True)
@click.option("--no-tls", is_flag=True, help="Serve plain HTTP instead of HTTPS.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate (default: self-signed).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="PEM private key for --cert.")
@click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None, help="Where the generated certificate is kept."
)
@click.option(
    "--delayed", is_flag=True, help="Answer every prediction with a DelayedResponse (collect via /responses)."
)
@click.option("--announce", "registry", metavar="REGISTRY_URL", help="Announce this service to a registry.")
@click.option("--closed-info", is_flag=True, help="/info and /interface need an identity too (default: open).")
@click.option(
    "--audit-optional", is_flag=True, help="Serve requests even when the audit log cannot be written (default: 503)."
)
@click.option(
    "--api-key-file", type=click.File("r"), help="File holding the registry API key (needed with --announce)."
)
@setting_options(ServiceConfig, SETTINGS)
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
def serve(
    target, nnunet_folder, folds, checkpoint, bundle_folder, no_tls, cert, key, state_dir, delayed, registry,
    closed_info, audit_optional, api_key_file, **given,
):  # fmt: skip
    """Serve the app defined in FILE_OR_MODULE (a TomaatApp, a subclass, or a TomaatService), or a trained model
    folder as it is (--nnunet, --bundle)."""
    if sum(bool(x) for x in (target, nnunet_folder, bundle_folder)) != 1:
        raise click.UsageError("give one of FILE_OR_MODULE, --nnunet RESULTS_FOLDER or --bundle BUNDLE_FOLDER")
    if (folds or checkpoint) and not nnunet_folder:
        raise click.UsageError("--folds and --checkpoint go with --nnunet")
    if bool(cert) != bool(key):
        raise click.UsageError("--cert and --key go together")
    if bool(registry) != bool(api_key_file):
        raise click.UsageError("--announce and --api-key-file go together")
    options = {name: given.pop(name) for name in SETTINGS}
    options.update(
        state_dir=state_dir, cert=cert, key=key, announce=registry,
        api_key=api_key_file.read().strip() if api_key_file else None,
    )  # fmt: skip
    options = {k: v for k, v in options.items() if v is not None}
    if no_tls:
        options["tls"] = False
    if delayed:
        options["delayed_responses"] = True
    if closed_info:
        options["open_info"] = False
    if audit_optional:
        options["audit_required"] = False
    ray = {name: given.pop(name) for name in RAY_OPTIONS}
    if nnunet_folder or bundle_folder:
        if ray["ray_address"] is not None:  # replicas load TARGET themselves; a folder's app is made here
            raise click.UsageError("--ray serves a FILE_OR_MODULE; wrap the folder in an app file to run it on Ray")
        service = _model_folder_service(nnunet_folder, folds, checkpoint, bundle_folder, options)
    else:
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

    from .server.ray_runner import RayOptions, RayRunner

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
        service.run_on(RayRunner(where, options, timeout=service.config.app_timeout))
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def _model_folder_service(nnunet_folder, folds, checkpoint, bundle_folder, options: dict) -> TomaatService:
    """A trained model folder served as it is: an app made from its own description (docs/deep-learning.md)."""
    try:
        if nnunet_folder:
            from .frameworks.nnunet import nnunet_app

            app: TomaatApp = nnunet_app(nnunet_folder, folds=folds, checkpoint=checkpoint)
        else:
            from .frameworks.monai_bundle import bundle_app

            app = bundle_app(bundle_folder)
        return TomaatService(app=app, **options)
    except (ImportError, InterfaceError, TypeError, ValueError, RuntimeError, OSError) as error:
        raise click.ClickException(str(error)) from None


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

# ---- access (tomaat/access): tokens a server accepts, the audit log's check ---------------------------
from .access.audit_cli import audit as _audit  # noqa: E402
from .access.tokens_cli import tokens as _tokens  # noqa: E402

main.add_command(_tokens)
main.add_command(_audit)

# ---- the DICOM gateway (tomaat/gateway): C-STORE in, results out ---------------------------------------
from .gateway.cli import gateway as _gateway  # noqa: E402

main.add_command(_gateway)
