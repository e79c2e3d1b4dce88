"""`tomaat tokens`: issue, list and revoke the bearer tokens a prediction server accepts (docs/security.md).

They are kept in the server's state folder; a running server sees a change at its next request.
"""

from __future__ import annotations

import datetime

import click

from .identity import SCOPES
from .tokens import TokenError, TokenStore, parse_expiry


def _default_state_dir() -> str:
    from ..server.config import ServiceConfig

    return ServiceConfig.state_dir


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="The server's state folder, as given to `tomaat serve --state-dir` (default ~/.tomaat).",
)


def _store(state_dir: str | None) -> TokenStore:
    return TokenStore(state_dir or _default_state_dir())


def _when(moment: float | None) -> str:
    if moment is None:
        return "never"
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


@click.group()
def tokens():
    """Bearer tokens for clients of a prediction server on this machine."""


@tokens.command()
@click.argument("name")
@click.option(
    "--scope", "scopes", multiple=True, type=click.Choice(SCOPES), default=("predict",), show_default=True,
    help="What the token allows; repeat for several.",
)  # fmt: skip
@click.option("--expires", help="When it stops working: a duration (90d, 12h, 30m) or a date (YYYY-MM-DD, UTC).")
@state_dir_option
def create(name, scopes, expires, state_dir):
    """Issue a token for NAME, printed once on standard output: only its hash is kept."""
    try:
        until = parse_expiry(expires) if expires else None
        token = _store(state_dir).create(name, scopes, until)
    except (TokenError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"token {name!r}: scopes {', '.join(sorted(set(scopes)))}; expires {_when(until)}.", err=True)
    click.echo("It is shown this once; give it to its holder now (clients: --token-file or TOMAAT_TOKEN).", err=True)
    click.echo(token)


@tokens.command(name="list")
@state_dir_option
def list_tokens(state_dir):
    """The tokens issued, live and ended (never the tokens themselves)."""
    try:
        records = _store(state_dir).list()
    except (TokenError, OSError, ValueError) as error:
        raise click.ClickException(f"cannot read the tokens: {error}") from None
    if not records:
        click.echo("no tokens: the server requires none (docs/security.md)")
        return
    now = datetime.datetime.now(datetime.UTC).timestamp()
    click.echo(f"{'NAME':24} {'ID':12} {'SCOPES':22} {'EXPIRES':20} STATE")
    for record in records:
        expires = record.get("expires")
        state = "revoked" if record.get("revoked") else "expired" if expires is not None and expires <= now else "live"
        click.echo(f"{record['name']:24} {record['id']:12} {','.join(record['scopes']):22} {_when(expires):20} {state}")


@tokens.command()
@click.argument("name_or_id")
@state_dir_option
def revoke(name_or_id, state_dir):
    """Revoke a token by its name or id: refused from the server's next request on."""
    try:
        record = _store(state_dir).revoke(name_or_id)
    except (TokenError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"revoked token {record['name']!r} ({record['id']})")
