"""The DICOM listener (pynetdicom): C-ECHO, and C-STORE from the AE titles on the allow-list.

An association from a calling AE title not in `callers` is rejected at once ("calling AE title not
recognised"), before any instance is sent; a known AE title calling from another host than its entry
names (when it names one) is answered 0x0124 (not authorized) to each C-ECHO and C-STORE. Each instance
is read (its UIDs and routing attributes) in the confined decoder, then written to the spool and
fsync'd; only then is the C-STORE answered "success". A full spool answers 0xA700 (out of resources), a file that is not a readable instance
0xC000 (cannot understand): the sender keeps its copy and says so.
"""

from __future__ import annotations

import logging

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from . import decoded
from .config import Config
from .spool import Full, Spool

log = logging.getLogger("tomaat.gateway")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5: refused, not authorized


def _application(config: Config) -> AE:
    """Every transfer syntax is accepted on the wire, so a sender never has to transcode; what the decoders
    cannot read fails the series when it is read, with a line naming it (docs/pacs.md)."""
    ae = AE(ae_title=config.ae_title)
    ae.require_calling_aet = list(config.callers)
    ae.maximum_associations = 16
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None  # pynetdicom's storage contexts all name their SOP class
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


def serve(config: Config, spool: Spool, metrics=None, ssl_context=None) -> ThreadedAssociationServer:
    """Start listening (in pynetdicom's threads); the server, to shut down."""

    def stranger(event, what: str) -> bool:
        """Whether the caller calls from another host than its entry in `callers` names (when it names one)."""
        calling, address = event.assoc.requestor.ae_title.strip(), event.assoc.requestor.address
        expected = config.callers[calling].host if calling in config.callers else ""
        if expected and address != expected:
            log.warning(
                "refused a %s from %s at %s: callers.%s names host %s", what, calling, address, calling, expected
            )
            return True
        return False

    def store(event) -> int:
        if stranger(event, "C-STORE"):
            return NOT_AUTHORIZED
        calling = event.assoc.requestor.ae_title.strip()
        data = event.encoded_dataset(include_meta=True)
        try:
            header = decoded.header(data)
        except decoded.Unreadable as problem:
            log.warning("refused an instance from %s: %s", calling, problem)
            return CANNOT_UNDERSTAND
        try:
            batch = spool.put(header, calling, data)
        except Full as full:
            log.warning(
                "spool full: refused instance %s of series %s from %s (%s)",
                header["sop_uid"],
                header["series_uid"],
                calling,
                full,
            )
            if metrics:
                metrics.refused.inc()
            return OUT_OF_RESOURCES
        except OSError as error:
            log.error("could not spool instance %s: %s", header["sop_uid"], error.strerror)
            return OUT_OF_RESOURCES
        log.debug("spooled instance %s of series %s in batch %s", header["sop_uid"], header["series_uid"], batch)
        return SUCCESS

    def echo(event) -> int:
        return NOT_AUTHORIZED if stranger(event, "C-ECHO") else SUCCESS

    def rejected(event) -> None:
        log.warning("rejected an association from %s", event.assoc.requestor.address)

    handlers: list = [(evt.EVT_C_STORE, store), (evt.EVT_C_ECHO, echo), (evt.EVT_REJECTED, rejected)]
    server = _application(config).start_server(
        (config.host, config.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
    )
    assert server is not None  # block=False returns the running server
    return server
