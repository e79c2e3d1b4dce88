"""Results out by C-STORE (pynetdicom), one association for a batch's results, or by STOW-RS, one request.

The files are the gateway's own results, sent as they lie on disk (pynetdicom reads only their file
meta information to pick the presentation context, and sends the rest unparsed). STOW-RS goes through
the PACS loop's client (tomaat.dicom.web: treq, one deadline for the whole exchange, a capped answer),
so the gateway has no HTTP code of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE

from .config import Node, Stow

log = logging.getLogger("tomaat.gateway")


class SendFailed(Exception):
    """The destination could not be reached or refused a result; the text says which and how."""


def send(
    ae_title: str, node: Node, paths: list[str], done: Callable[[str], None], ssl_context=None, timeout: float = 30.0
) -> None:
    """C-STORE each file to `node`, calling done(path) as each is acknowledged; SendFailed at the first failure."""
    metas = {path: read_file_meta_info(path) for path in paths}
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for meta in metas.values():
        ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    where = f"{node.ae_title} at {node.host}:{node.port}"
    tls = (ssl_context, node.host) if ssl_context is not None else None
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, tls_args=tls)
    if not assoc.is_established:
        raise SendFailed(f"{where} did not accept an association ({'rejected' if assoc.is_rejected else 'no answer'})")
    try:
        for path, meta in metas.items():
            status = assoc.send_c_store(path)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendFailed(f"{where} did not answer the C-STORE of {meta.MediaStorageSOPInstanceUID}")
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, or stored with a warning
                raise SendFailed(f"{where} answered C-STORE status 0x{code:04X} for {meta.MediaStorageSOPInstanceUID}")
            done(path)
    finally:
        if assoc.is_established:
            assoc.release()


def store(name: str, destination: Stow, study_uid: str, paths: list[str], what: str) -> None:
    """STOW-RS the files to `destination` (destinations.`name`) in one request; SendFailed naming why not.

    One request, so the destination stores all or (where it can) none; sent again after a failure or a
    kill, the same SOP Instance UIDs arrive again and the destination keeps one copy of each.
    """
    from ..client.errors import ClientError
    from ..dicom.web import Deadline, Pacs

    try:
        headers = destination.headers()
    except OSError as error:
        raise SendFailed(f"destinations.{name}: its credentials file cannot be read ({error.strerror})") from None
    instances = []
    for path in paths:
        with open(path, "rb") as handle:
            instances.append(handle.read())
    try:
        pacs = Pacs(destination.url, headers, Deadline(destination.timeout, f"destinations.{name}.timeout"))
        pacs.credentials_hint = f"user and password_file, or token_file, of destinations.{name}"
        pacs.store(study_uid, instances, what)
    except ClientError as error:
        raise SendFailed(str(error)) from None
