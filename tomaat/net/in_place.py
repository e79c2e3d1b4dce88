"""Request bodies received in place: the socket is read straight into the body's map.

Twisted reads a socket into a new bytes object, hands it up through the HTTP parser, and the request copies
it into its body (net/body.BodyBuffer): for a 64 MiB volume, 256 allocations and a second copy of every byte,
on the reactor. While a connection's HTTP channel is receiving a body of known length it offers the map's
next bytes as room (web.GuardedChannel.body_room), and the transport here reads the socket into that room
with recv_into; every other byte (request lines, headers, chunked bodies, the body's last byte, a refused
body) takes Twisted's own way. Over TLS the decryption does the same (net/bulk_tls.py).
"""

from __future__ import annotations

from errno import EWOULDBLOCK

from twisted.internet import defer, interfaces, main, tcp
from zope.interface import implementer


class _Server(tcp.Server):
    """A TCP connection that reads into its protocol's room where it offers one."""

    def doRead(self):
        offer = getattr(self.protocol, "body_room", None)
        room = offer(self.bufferSize) if offer is not None else None
        if room is None:
            return super().doRead()
        with room:
            try:
                count = self.socket.recv_into(room)
            except OSError as error:
                return None if error.args[0] == EWOULDBLOCK else main.CONNECTION_LOST
        if not count:
            return main.CONNECTION_DONE
        self.protocol.body_received(count)
        return None


class _Port(tcp.Port):
    transport = _Server


@implementer(interfaces.IStreamServerEndpoint)
class TCPServerEndpoint:
    """Twisted's TCP server endpoint (IPv4 or IPv6, by the interface's address) with in-place body reads."""

    def __init__(self, reactor, port: int, interface: str = "", backlog: int = 50):
        self.reactor, self.port, self.interface, self.backlog = reactor, port, interface, backlog

    def listen(self, factory):
        return defer.execute(self._listen, factory)

    def _listen(self, factory):
        port = _Port(self.port, factory, self.backlog, self.interface, self.reactor)
        port.startListening()
        return port
