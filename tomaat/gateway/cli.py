"""`tomaat gateway serve` and `tomaat gateway status` (docs/gateway.md)."""

from __future__ import annotations

import json
import logging
import signal
import ssl
import sys
import threading

import click

from .config import Config, ConfigError, load


def _config(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as error:
        click.echo(f"tomaat: invalid input: {error}", err=True)
        sys.exit(2)


def _tls(config: Config) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(listening, sending) contexts: both sides show a certificate and check the other's against `ca`."""
    if config.tls is None:
        return None, None
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=config.tls.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(config.tls.certificate, config.tls.key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls.ca)
    client.load_cert_chain(config.tls.certificate, config.tls.key)
    return server, client


@click.group()
def gateway():
    """A DICOM gateway: series in by C-STORE, results (SEG, RTSTRUCT, SR) out by C-STORE or STOW-RS (docs/gateway.md)."""


@gateway.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The gateway's JSON configuration."
)
@click.option("-v", "--verbose", is_flag=True, help="Log each instance spooled.")
def serve(config_path, verbose):
    """Listen for C-STORE and C-ECHO, and work through the spool until stopped (SIGTERM or Ctrl-C)."""
    from . import listener, status
    from .spool import Spool
    from .worker import Worker

    config = _config(config_path)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pynetdicom", "twisted"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("tomaat.gateway")
    try:
        spool = Spool(config.spool, config.spool_max_bytes)
        listening, sending = _tls(config)
    except (OSError, ssl.SSLError) as error:
        click.echo(f"tomaat: error: {error}", err=True)
        sys.exit(1)
    metrics = status.Metrics(spool)
    from . import decoded

    decoded.POOL.warm()
    pages = (
        status.serve(config.status_host, config.status_port, spool, metrics) if config.status_port is not None else None
    )
    try:
        server = listener.serve(config, spool, metrics, listening)
    except OSError as error:
        click.echo(f"tomaat: error: cannot listen on {config.host}:{config.port} ({error.strerror})", err=True)
        sys.exit(1)
    spool.restart_quiet()
    worker = Worker(config, spool, metrics, sending)
    worker.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    log.info(
        "%s listening on %s:%d%s; %d batch(es) in the spool%s",
        config.ae_title, config.host, config.port, " (TLS)" if listening else "", len(spool.batches()),
        f"; /health and /metrics on {config.status_host}:{pages.server_address[1]}" if pages else "",
    )  # fmt: skip
    stopped.wait()
    log.info("stopping")
    server.shutdown()
    worker.stop()
    if pages:
        pages.shutdown()


@gateway.command(name="status")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The gateway's JSON configuration."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a series, for scripts.")
def status_(config_path, as_json):
    """The series in the spool: receiving, being predicted, sending, held or failed."""
    from .spool import Spool
    from .status import listing

    config = _config(config_path)
    rows = listing(Spool(config.spool, config.spool_max_bytes, owner=False), config.retention)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("no series in the spool")
        return
    for row in rows:
        line = f"{row['series_uid']}  {row['state']:<9} from {row['calling_ae']:<16} {row['instances']} instances"
        if row["results"]:
            line += f", {row['sent']}/{row['results']} results sent"
        if "deleted_in_s" in row:
            line += f", deleted in {row['deleted_in_s']:g} s"
        if row["error"]:
            line += f"  ({row['error'][:120]})"
        click.echo(line)
