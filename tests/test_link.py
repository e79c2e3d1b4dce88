"""benchmarks/link.py, measured: bandwidth each way, round-trip latency, exact bytes, clean closes.

Every wait has a deadline (socket timeouts); the figures are timed, never slept for.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time

import pytest

from benchmarks.link import PROFILES, Link

DEADLINE = 10.0  # seconds any one socket call may block before the test fails
UP_BYTES = 2_000_000  # 2.0 s at 4g's 8 Mbit/s up
DOWN_BYTES = 6_000_000  # 1.6 s at 4g's 30 Mbit/s down


def pattern(n: int) -> bytes:
    """n bytes that are not all alike, so that a dropped or repeated chunk changes the hash."""
    block = hashlib.sha256(b"link").digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


def command(text: str) -> bytes:
    """A command for the Peer: always 32 bytes, so that what follows it is never taken for part of it."""
    return f"{text:<31}\n".encode()


class Peer:
    """A loopback server: "echo" echoes (itself too) until EOF; "both N" sends N bytes of pattern while it reads
    until the client's half-close, then sends the SHA-256 (hex) of what it read and closes."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(DEADLINE)
        self.port = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket):
        try:
            with conn:
                conn.settimeout(DEADLINE)
                head = b""
                while len(head) < 32 and (data := conn.recv(32 - len(head))):
                    head += data
                words = head.decode().split()
                if words[0] == "echo":
                    conn.sendall(head)
                    while data := conn.recv(65536):
                        conn.sendall(data)
                    return
                sender = threading.Thread(target=conn.sendall, args=(pattern(int(words[1])),))
                sender.start()
                digest = hashlib.sha256()
                while data := conn.recv(65536):
                    digest.update(data)
                sender.join(DEADLINE)
                conn.sendall(digest.hexdigest().encode())
        except BaseException as problem:  # noqa: BLE001 - reported by the test that waits on it
            self.errors.append(problem)

    def close(self):
        self.listener.close()


@pytest.fixture
def peer():
    running = Peer()
    yield running
    running.close()
    assert not running.errors, running.errors


def connect(link: Link) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", link.port), timeout=DEADLINE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_each_direction_has_its_own_rate_and_the_bytes_arrive_exactly(peer):
    """4g: 2 MB up at 8 Mbit/s while 6 MB come down at 30 Mbit/s on the same connection, both at full rate."""
    profile = PROFILES["4g"]
    up_payload = pattern(UP_BYTES)[::-1]
    with Link(peer.port, "4g") as link, connect(link) as sock:
        began = time.monotonic()
        sock.sendall(command(f"both {DOWN_BYTES}"))

        def send():
            sock.sendall(up_payload)
            sock.shutdown(socket.SHUT_WR)  # a half-close: the answer still comes down

        sender = threading.Thread(target=send)
        sender.start()
        received, down_done = bytearray(), None
        while data := sock.recv(65536):
            received += data
            if down_done is None and len(received) >= DOWN_BYTES:
                down_done = time.monotonic()
        finished = time.monotonic()
        sender.join(DEADLINE)
        assert bytes(received[:DOWN_BYTES]) == pattern(DOWN_BYTES)
        assert received[DOWN_BYTES:].decode() == hashlib.sha256(up_payload).hexdigest()
        # Each way: the handshake's RTT, the bytes at that direction's rate, the command's or the digest's RTT.
        down_expected = 2 * profile.rtt + DOWN_BYTES * 8 / profile.down  # 1.70 s
        assert down_expected * 0.85 < down_done - began < down_expected * 1.15, down_done - began
        up_expected = 2 * profile.rtt + (32 + UP_BYTES) * 8 / profile.up  # 2.10 s
        assert up_expected * 0.85 < finished - began < up_expected * 1.15, finished - began
    assert (link.bytes_up, link.bytes_down) == (32 + UP_BYTES, DOWN_BYTES + 64)
    assert link.connections == 1


def test_a_tiny_request_pays_the_round_trip_and_a_new_connection_the_handshake_too(peer):
    rtt = PROFILES["dsl"].rtt  # 20 ms
    with Link(peer.port, "dsl") as link, connect(link) as sock:
        connected = time.monotonic()
        sock.sendall(command("echo"))
        assert sock.recv(100) == command("echo")
        first = time.monotonic() - connected
        trips = []
        for _ in range(5):
            began = time.monotonic()
            sock.sendall(b"ping")
            assert sock.recv(100) == b"ping"
            trips.append(time.monotonic() - began)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""  # the peer's close comes back through the link
    assert 1.9 * rtt < first < 2 * rtt + 0.03, first  # SYN, SYN-ACK, then the request and its answer
    assert all(0.8 * rtt < trip < rtt + 0.02 for trip in trips), trips


def test_the_lan_profile_is_fast_and_adds_half_a_millisecond(peer):
    with Link(peer.port, "lan") as link, connect(link) as sock:
        sock.sendall(command("echo"))
        assert sock.recv(100) == command("echo")
        payload = pattern(20_000_000)
        began = time.monotonic()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            got += sock.recv(1 << 20)
        elapsed = time.monotonic() - began
        sender.join(DEADLINE)
        assert bytes(got) == payload
    assert len(payload) * 8 / 1e9 < elapsed < 2.0  # never faster than 1 Gbit/s (0.16 s), and not slow


def test_closing_the_link_closes_its_connections_and_a_refused_connect_closes_the_client(peer):
    with Link(peer.port, "dsl") as link:
        sock = connect(link)
        sock.sendall(command("echo"))
        assert sock.recv(100) == command("echo")
    began = time.monotonic()
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    assert time.monotonic() - began < 1.0
    sock.close()
    with pytest.raises(OSError):  # the listener is gone
        socket.create_connection(("127.0.0.1", link.port), timeout=DEADLINE).close()

    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    with Link(port, "dsl") as link, connect(link) as sock:
        began = time.monotonic()
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - began < 1.0


def test_tls_passes_through_untouched_the_client_sees_the_servers_own_certificate(tmp_path):
    """The links benchmark's HTTPS rows rely on it: the proxy relays TLS records as opaque bytes."""
    from tomaat.net.tls import ensure_certificate

    cert, key = ensure_certificate(str(tmp_path), "127.0.0.1")
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(DEADLINE)
    payload = pattern(300_000)
    served: list = []

    def serve():
        try:
            conn, _ = listener.accept()
            conn.settimeout(DEADLINE)
            with server_side.wrap_socket(conn, server_side=True) as tls:
                got = bytearray()
                while len(got) < len(payload):
                    got += tls.recv(65536)
                tls.sendall(hashlib.sha256(got).digest())
        except BaseException as problem:  # noqa: BLE001 - reported by the assertion below
            served.append(problem)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_side = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_side.load_verify_locations(cert)  # verified: a proxy that changed one byte fails the handshake
    client_side.check_hostname = False  # its name is a DNSName "127.0.0.1", which Python's check does not take as an IP
    with Link(listener.getsockname()[1], "dsl") as link, connect(link) as sock:
        with client_side.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(payload)
            digest = b""
            while len(digest) < 32 and (data := tls.recv(32)):
                digest += data
            with open(cert, "rb") as handle:
                assert tls.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(handle.read().decode())
    thread.join(DEADLINE)
    listener.close()
    assert not served, served
    assert digest == hashlib.sha256(payload).digest()
    assert link.bytes_up > len(payload) and link.bytes_down > 32  # TLS records: the payload plus their framing
