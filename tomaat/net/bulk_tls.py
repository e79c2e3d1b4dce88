"""TLS for bulk transfers: Twisted's memory-BIO TLS layer, encrypting volumes in large pieces.

Twisted's `TLSMemoryBIOProtocol` encrypts one 16 KiB record per pyOpenSSL
`send`, then reads it back out of the memory BIO and writes it to the socket:
4,096 round trips at about 20 us each for a 64 MiB volume, on top of joining
and slicing copies. That, not the cipher, was most of what HTTPS cost
(issue 25, docs/performance.md). Here the same pyOpenSSL connection (so
`getHandle()`, peer certificates, mutual TLS and fingerprint checks are
unchanged) encrypts up to 256 KiB per `send` and hands the records to the
socket in one write, and the socket is read 256 KiB at a time. Decryption
is one record per `SSL_read` (OpenSSL returns no more): while the HTTP
channel receives a body of known length, the records are decrypted straight
into the body's map (web.GuardedChannel.body_room, as net/in_place.py reads
plain sockets), with no bytes object per record, no pass through the HTTP
parser per record and no second copy; other bytes go up record by record.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import interfaces
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import URI, HostnameEndpoint
from zope.interface import alsoProvides, implementer

READ_SIZE = 1 << 18  # bytes asked of the socket per read
SEND_SIZE = 1 << 18  # plaintext encrypted per SSL_write: 16 records, one bio_read, one transport write
BIG_WRITE = 1 << 16  # writes at least this large skip Twisted's small-write aggregation (and its join)
RECORD = 1 << 14  # TLS's largest record payload


def _ciphertext_size(plaintext: int) -> int:
    """Room for the records of `plaintext` bytes (each record adds at most 22 bytes in TLS 1.3, 29 in 1.2)
    plus a handshake message: read in one bio_read, and no larger, since an allocation per call is the cost."""
    return plaintext + plaintext // 256 + 4096


def _cffi():
    """pyOpenSSL's own cffi handles, to decrypt into a buffer of ours (its recv_into decrypts into a buffer of
    its own, then copies); None where its internals are not as expected: every record then takes recv()."""
    try:
        from OpenSSL._util import ffi, lib

        return (ffi, lib) if hasattr(ffi, "release") and hasattr(SSL.Connection, "_raise_ssl_error") else None
    except ImportError:
        return None


_CFFI = _cffi()


def _whole_writes(connection: SSL.Connection) -> None:
    """SSL_write encrypts all it is given, not one record per call.

    pyOpenSSL turns on partial writes, which only a socket that can be full needs; a memory BIO never is
    full. Encrypting 64 MiB took 85 ms as 4,096 one-record send/bio_read pairs, 20 ms as 256 KiB ones
    (docs/performance.md). Where pyOpenSSL's internals are not as expected the writes stay partial, one
    record per send, which _write handles too.
    """
    try:
        from OpenSSL._util import lib

        lib.SSL_clear_mode(connection._ssl, lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
    except (ImportError, AttributeError):
        pass


class BulkTLSProtocol(BufferingTLSTransport):
    """A TLS connection that encrypts in large pieces and reads its socket in large pieces (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.write  # Twisted's sends every write through its aggregation (and a join): ours chooses

    def makeConnection(self, transport):
        super().makeConnection(transport)
        alsoProvides(self, interfaces.ISSLTransport)  # request.isSecure(), as with listenSSL
        _whole_writes(self._tlsConnection)
        if hasattr(transport, "bufferSize"):  # a TCP connection: read more of the socket at once
            transport.bufferSize = READ_SIZE

    def _flushReceiveBIO(self):
        """Twisted's loop (one record per recv, up through dataReceived), except that a body's bytes are
        decrypted into the room the HTTP channel offers (module docstring)."""
        offer = getattr(self.wrappedProtocol, "body_room", None) if _CFFI is not None else None
        while not self._lostTLSConnection:
            room = offer(READ_SIZE) if offer is not None else None
            try:
                if room is None:
                    data = self._tlsConnection.recv(2 * RECORD)
                else:
                    self._decrypt_into(room)
                    continue
            except SSL.WantReadError:
                break  # what arrived is used up
            except SSL.ZeroReturnError:  # the peer closed TLS: the protocol is told as by the transport
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def _decrypt_into(self, room: memoryview) -> None:
        """Records decrypted into room until it is full or nothing more has arrived; what was decrypted is
        handed on even when an error (or WantReadError) ends it, which is then raised."""
        assert _CFFI is not None  # _flushReceiveBIO offers rooms only then
        ffi, lib = _CFFI
        connection, filled = self._tlsConnection, 0
        with room:
            target = ffi.from_buffer(room, require_writable=True)
            try:
                while filled < len(room):
                    count = lib.SSL_read(connection._ssl, target + filled, len(room) - filled)
                    if count <= 0:
                        connection._raise_ssl_error(connection._ssl, count)
                        raise SSL.WantReadError()  # not reached: OpenSSL reports every read of nothing
                    filled += count
            finally:
                ffi.release(target)
                if filled and not self._aborted:
                    self.wrappedProtocol.body_received(filled)

    def write(self, data):
        """Small writes go through Twisted's aggregation; a large one is encrypted as it is, uncopied.
        Bytes or any contiguous buffer (a memoryview of a volume: client/upload.py)."""
        if len(data) < BIG_WRITE:
            self._aggregator.write(data if isinstance(data, bytes) else bytes(data))
            return
        self._aggregator.flush()
        if self.disconnecting and self._producer is None:
            return
        self._write(data)

    def writeSequence(self, iovec):
        for data in iovec:
            self.write(data)

    def _write(self, data):
        if self._lostTLSConnection:
            return
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            piece = view[sent : sent + SEND_SIZE]
            try:
                sent += self._tlsConnection.send(piece)
            except SSL.WantReadError:  # a handshake in the way: retried with the same bytes once it is done
                self._bufferedWrite(bytes(view[sent:]))
                break
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                break
            else:
                self._flushSendBIO(_ciphertext_size(len(piece)))

    def _flushSendBIO(self, expected: int = _ciphertext_size(4 * RECORD)):
        """All the records waiting in the BIO, in one transport write."""
        pieces = []
        while True:
            try:
                pieces.append(self._tlsConnection.bio_read(expected))
            except SSL.WantReadError:
                break
        if pieces:
            transport = self.transport
            assert transport is not None  # set before the handshake starts, kept after the connection is lost
            # zope declares interface methods without `self`; mypy reads them so without the mypy-zope plugin
            transport.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))  # type: ignore[call-arg, misc]


class BulkTLSFactory(TLSMemoryBIOFactory):
    protocol = BulkTLSProtocol


@implementer(interfaces.IStreamServerEndpoint)
class TLSServerEndpoint:
    """A TCP server endpoint whose connections speak TLS through BulkTLSProtocol; `options` as for listenSSL."""

    def __init__(self, tcp, options):
        self.tcp = tcp
        self.options = options

    def listen(self, factory):
        return self.tcp.listen(BulkTLSFactory(self.options, False, factory))


@implementer(interfaces.IStreamClientEndpoint)
class TLSClientEndpoint:
    """A client endpoint speaking TLS through BulkTLSProtocol, `creator` an IOpenSSLClientConnectionCreator."""

    def __init__(self, tcp, creator):
        self.tcp = tcp
        self.creator = creator

    def connect(self, factory):
        attempt = self.tcp.connect(BulkTLSFactory(self.creator, True, factory))
        return attempt.addCallback(lambda protocol: protocol.wrappedProtocol)


class EndpointFactory:
    """For Agent.usingEndpointFactory: plain TCP for http, BulkTLS for https with the policy's connection creator
    (what Agent does by itself, with Twisted's per-record TLS layer)."""

    def __init__(self, reactor, policy, connect_timeout: float | None = None):
        self.reactor = reactor
        self.policy = policy
        self.connect_timeout = connect_timeout

    def endpointForURI(self, uri: URI):
        from twisted.web.error import SchemeNotSupported

        timeout = 30.0 if self.connect_timeout is None else self.connect_timeout  # 30: HostnameEndpoint's default
        tcp = HostnameEndpoint(self.reactor, uri.host.decode("ascii"), uri.port, timeout=timeout)
        if uri.scheme == b"http":
            return tcp
        if uri.scheme == b"https":
            return TLSClientEndpoint(tcp, self.policy.creatorForNetloc(uri.host, uri.port))
        raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
