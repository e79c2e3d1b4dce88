"""The `tomaat-registry` command line: the daemon, and the operator's key management.

Key commands talk to the database directly (no daemon needed, and a running
daemon sees their effect at once). A new key is printed once, alone on stdout,
so that `KEY=$(tomaat-registry keys create --owner ...)` works; everything else
goes to stderr or is about keys by their public id.
"""

from __future__ import annotations

import datetime
import json
import sys

import click

from ..config import refuse_host
from . import store
from .announcement import owner_problem
from .keys import generate_key, hash_key, looks_like_key, looks_like_key_id
from .service import DEFAULTS, RegistryService

DB_HELP = (
    "SQLite file path, or postgresql://user:password@host:port/database "
    f"(default {DEFAULTS.db}; also read from TOMAAT_REGISTRY_DB, which keeps a password out of ps)."
)


def db_option(function):
    return click.option("--db", default=DEFAULTS.db, envvar="TOMAAT_REGISTRY_DB", show_envvar=True, help=DB_HELP)(
        function
    )


def _open(db: str) -> store.SyncStore:
    try:
        opened = store.SyncStore(db)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--db") from None
    _run(opened, store.create_schema)
    return opened


def _run(opened: store.SyncStore, operation, *args, **kwargs):
    try:
        return opened.run(operation, *args, **kwargs)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    except Exception as error:
        where = opened.database.describe()
        raise click.ClickException(f"the registry database ({where}) failed: {type(error).__name__}: {error}") from None


def _when(seconds) -> str:
    if seconds is None:
        return "never"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


@click.group()
@click.version_option(package_name="tomaat")
def main():
    """TOMAAT announcement registry: where prediction servers announce themselves and clients discover them."""


@main.command()
@click.option("--port", type=int, default=DEFAULTS.port, show_default=True, help="Port to listen on (0: any free).")
@click.option(
    "--listen-address", "interface", default=DEFAULTS.listen_address, show_default=True, help="Address to listen on."
)
@click.option("--host", callback=refuse_host, expose_value=False, hidden=True)
@db_option
@click.option("--no-tls", is_flag=True, help="Serve plain HTTP (behind a TLS-terminating proxy, or for tests).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate (default: self-signed).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="PEM private key for --cert.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=DEFAULTS.state_dir,
    show_default=True,
    help="Where the generated certificate is kept.",
)
@click.option(
    "--expiry",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.expiry,
    show_default=True,
    help="Seconds an announcement stays listed without being renewed.",
)
@click.option(
    "--private",
    is_flag=True,
    help="Serve /discover and the front page only to requests with 'Authorization: Bearer KEY', KEY a live "
    "registry key (read-only keys included); /health stays open.",
)
def serve(port, interface, db, no_tls, cert, key, state_dir, expiry, private):
    """Run the registry daemon."""
    if bool(cert) != bool(key):
        raise click.UsageError("--cert and --key go together")
    options = {"port": port, "listen_address": interface, "db": db, "state_dir": state_dir, "expiry": expiry}
    options.update(private=private or None)  # None: not given here, so a config's own value would stand
    options.update(tls=not no_tls, cert=cert, key=key)
    try:
        service = RegistryService(options)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--db") from None
    service.run()


@main.group()
def keys():
    """Issue, list and revoke the API keys that servers announce with (and clients read a private registry with)."""


@keys.command("create")
@click.option("--owner", required=True, help="Who the key is for (shown in `keys list`), e.g. 'Lab X <jane@x.org>'.")
@click.option(
    "--read-only",
    is_flag=True,
    help="A key that reads a private registry (/discover, the front page) but cannot announce or withdraw.",
)
@db_option
def keys_create(owner, read_only, db):
    """Make a key and print it once, alone on stdout; only its hash is stored."""
    problem = owner_problem(owner)
    if problem:
        raise click.BadParameter(problem, param_hint="--owner")
    opened = _open(db)
    key = generate_key()
    kind = store.READ_ONLY if read_only else store.ANNOUNCE
    now = datetime.datetime.now(datetime.UTC).timestamp()
    key_id = _run(opened, store.add_key, hash_key(key), owner.strip(), now, kind)
    click.echo(
        f"Created key {key_id} ({kind}) for {owner.strip()}. It is shown only now: hand it over securely.", err=True
    )
    click.echo(key)


@keys.command("list")
@db_option
@click.option("--json", "as_json", is_flag=True, help="One JSON list instead of a table.")
def keys_list(db, as_json):
    """Show each key's id, owner, kind, creation, last use and announcements (never the key)."""
    found = _run(_open(db), store.list_keys)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("No keys yet: make one with `tomaat-registry keys create --owner NAME`.", err=True)
        return
    rows = [("ID", "OWNER", "KIND", "CREATED", "LAST USED", "SERVICES", "STATUS")]
    for entry in found:
        status = f"revoked {_when(entry['revoked'])}" if entry["revoked"] is not None else "active"
        created, used = _when(entry["created"]), _when(entry["last_used"])
        rows.append((entry["id"], entry["owner"], entry["kind"], created, used, str(entry["services"]), status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


@keys.command("revoke")
@click.argument("which", metavar="ID_OR_KEY")
@db_option
def keys_revoke(which, db):
    """Revoke a key by the id `keys list` shows, or by the key itself ('-' reads it from stdin,
    keeping it out of shell history). Its announcements leave /discover at once."""
    if which == "-":
        which = sys.stdin.readline().strip()
    now = datetime.datetime.now(datetime.UTC).timestamp()
    if looks_like_key(which):
        query, shown = {"key_hash": hash_key(which)}, "the given key"
    elif looks_like_key_id(which.lower()):
        query, shown = {"key_id": which.lower()}, f"id {which.lower()}"
    else:
        raise click.BadParameter(
            "expected a key id as `keys list` shows it (12 hexadecimal characters) or the 64-character key itself",
            param_hint="ID_OR_KEY",
        )
    result = _run(_open(db), store.revoke_key, now, **query)
    if result is None:
        raise click.ClickException(f"no key with {shown} in this registry; see `tomaat-registry keys list`")
    label = f"key {result['id']} ({result['owner']})"
    if result["already_revoked"]:
        click.echo(f"{label} was already revoked.")
    else:
        click.echo(f"Revoked {label}; {result['services_removed']} announcement(s) removed.")


if __name__ == "__main__":
    main()
