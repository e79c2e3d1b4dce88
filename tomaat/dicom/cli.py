"""`tomaat dicomweb predict`: the PACS loop (tomaat/dicom/loop.py) on the command line.

Standard output carries the new SEGs' SeriesInstanceUIDs and nothing else, so a script can capture
them; progress and messages go to standard error. Exit status: 2 for input (no such study or series,
a series that is not one volume, refused credentials), 1 for a PACS or server that cannot be reached,
3 when the prediction server refuses.
"""

from __future__ import annotations

import click

from ..client.cli import _fail, _pairs, _Progress, _say, _trust_options
from ..client.errors import ClientError


class _LoopProgress(_Progress):
    """The client's upload bar and spinner, with a count of retrieved instances before them."""

    def __init__(self, expected: int | None = None):
        super().__init__()
        self.expected = expected
        self.fetching = None

    def retrieved(self, count: int, size: int) -> None:
        if not self.console.is_terminal:
            return
        if self.fetching is None:
            self.fetching = self.console.status("retrieving")
            self.fetching.start()
        self.fetching.update(f"retrieving: {count} instances, {size / 1e6:.1f} MB")

    def upload(self, sent: int, total: int) -> None:
        if self.fetching is not None:
            self.fetching.stop()
            self.fetching = None
        super().upload(sent, total)

    def close(self) -> None:
        if self.fetching is not None:
            self.fetching.stop()
            self.fetching = None
        super().close()


@click.group()
def dicomweb():
    """Work with a PACS over DICOMweb (docs/pacs.md)."""


@dicomweb.command()
@click.argument("server_url")
@click.option("--dicomweb", "dicomweb_url", required=True, metavar="URL", help="The PACS's DICOMweb root URL.")
@click.option("--study", required=True, metavar="UID", help="StudyInstanceUID of the study.")
@click.option("--series", metavar="UID", help="SeriesInstanceUID (default: the study's only image series).")
@click.option("--modality", help="Choose the study's only series of this modality (CT, MR, ...).")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE", help="A slider, checkbox or option value.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=PATH", help="Another input of the service.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for the outputs that are not label volumes.")
@click.option("--user", envvar="TOMAAT_DICOMWEB_USER", show_envvar=True, help="PACS user (basic authentication).")
@click.option("--password", envvar="TOMAAT_DICOMWEB_PASSWORD", show_envvar=True, help="PACS password.")
@click.option("--token", envvar="TOMAAT_DICOMWEB_TOKEN", show_envvar=True, help="PACS bearer token.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to wait for the result.")
@_trust_options
def predict(
    server_url,
    dicomweb_url,
    study,
    series,
    modality,
    settings,
    inputs,
    out,
    user,
    password,
    token,
    timeout,
    fingerprint,
    insecure,
):
    """Predict on a series from the PACS and store each label volume back in its study as a DICOM SEG."""
    from ..client.blocking import Client
    from . import loop
    from .web import Pacs, session

    if token and (user or password):
        raise click.UsageError("give --user/--password or --token, not both")
    if password and not user:
        raise click.UsageError("--password needs --user")
    given = {**_pairs(inputs, "--input"), **_pairs(settings, "--set")}
    progress = _LoopProgress()
    try:
        pacs = Pacs(dicomweb_url, session(user, password, token))
        client = Client(server_url, fingerprint=fingerprint, insecure=insecure, result_timeout=timeout)
        try:
            stored = loop.run(
                client,
                pacs,
                study,
                series=series,
                modality=modality,
                given=given,
                out=out,
                say=lambda text: _say(text, err=True),
                progress=progress,
            )
        finally:
            progress.close()
    except ClientError as error:
        _fail(error)
    for label, text in stored.texts:
        _say(f"{label}: {text}", err=True)
    for path, what in stored.written:
        _say(f"wrote {path}  ({what})", err=True)
    for name, uid in stored.segs.items():
        _say(f"stored '{name}' as SEG series {uid}", err=True)
        click.echo(uid)
