"""`tomaat dicomweb predict`: the PACS loop (tomaat/dicom/loop.py) on the command line.

Standard output carries the new SEGs' SeriesInstanceUIDs and nothing else, so a script can capture
them; progress and messages go to standard error. Exit status: 2 for input (no such study or series,
a series that is not one volume, refused credentials), 1 for a PACS or server that cannot be reached or
fails, and for --timeout passing (as for a peer that stops answering: running again later may work),
3 when the prediction server refuses.
"""

from __future__ import annotations

import click

from ..client.cli import Progress, credential_options, fail, pairs, say, trust_options
from ..client.errors import ClientError


class _LoopProgress(Progress):
    """The client's upload bar and spinner, with the bytes of the series retrieved so far before them."""

    def __init__(self):
        super().__init__()
        self.fetching = None

    def retrieved(self, size: int) -> None:
        if not self.console.is_terminal:
            return
        if self.fetching is None:
            self.fetching = self.console.status("retrieving")
            self.fetching.start()
        self.fetching.update(f"retrieving: {size / 1e6:.1f} MB")

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
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True, max=1e9),
    default=3600.0,
    show_default=True,
    help="Seconds the whole command may take: every PACS exchange and the prediction (exit status 1 past it).",
)
@trust_options
@credential_options(prefix="server-")
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
    credentials,
):
    """Predict on a series from the PACS and store each label volume back in its study as a DICOM SEG."""
    from ..client.blocking import Client
    from . import loop
    from .web import Deadline, Pacs
    from .web import credentials as pacs_credentials  # `credentials` are the prediction server's

    if token and (user or password):
        raise click.UsageError("give --user/--password or --token, not both")
    if password and not user:
        raise click.UsageError("--password needs --user")
    given = {**pairs(inputs, "--input"), **pairs(settings, "--set")}
    progress = _LoopProgress()
    deadline = Deadline(timeout)  # from here: the PACS's exchanges and the prediction server's share it
    try:
        pacs = Pacs(dicomweb_url, pacs_credentials(user, password, token), deadline)
        # The volume is sent once, so it is not kept on the server for reuse (reuse=False); the timeouts are
        # what is left of the deadline, set again before each call (loop._served).
        options = {"fingerprint": fingerprint, "insecure": insecure, "reuse": False, **credentials}
        client = Client(server_url, timeout=min(30.0, timeout), result_timeout=timeout, **options)
        try:
            stored = loop.run(
                client,
                pacs,
                study,
                series=series,
                modality=modality,
                given=given,
                out=out,
                say=lambda text: say(text, err=True),
                progress=progress,
            )
        finally:
            progress.close()
    except ClientError as error:
        fail(error)
    for label, text in stored.texts:
        say(f"{label}: {text}", err=True)
    for path, what in stored.written:
        say(f"wrote {path}  ({what})", err=True)
    for name, uid in stored.segs.items():
        say(f"stored '{name}' as SEG series {uid}", err=True)
        click.echo(uid)
