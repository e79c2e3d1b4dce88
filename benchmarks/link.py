"""A slow network link on loopback: a TCP proxy that limits bandwidth each way and adds round-trip latency.

Pure Python, no root (no tc/netem). The proxy listens on a free loopback port and forwards each
connection to a target host:port. Each direction (up = client to server, down = server to client)
is a delay line of its own:

- a reader takes at most one chunk from the sending socket and schedules it on a virtual clock:
  the link serialises bytes back to back at its rate, so a chunk read at t leaves the link at
  max(t, the end of the previous chunk) + size / rate (a token bucket whose burst is one chunk);
- the chunk arrives half an RTT after that, and a writer hands it to the receiving socket then.

Latency and bandwidth compose as on a real link (a 1 MB answer over 30 Mbit/s and 50 ms RTT takes
0.27 s + 25 ms after the server sends it). The reader runs at most two chunks or 10 ms ahead of the
link and the queue between reader and writer is bounded, so nothing is buffered without bound:
a receiver that does not read stops the writer, then the reader, then the sender (TCP backpressure).
Reader and writer are threads on blocking sockets (time.sleep keeps to a tenth of a millisecond
where asyncio's timers round to one); the hand-offs add about 0.3 ms to a round trip.

The handshake pays too: the upstream connect is made half an RTT after the client connected (the
SYN on its way), and the client's first bytes leave no earlier than one RTT after it connected (the
SYN-ACK on its way back), so the first request of a new connection costs two RTTs, a request on a
kept-alive one one RTT. A FIN travels the delay line like data (half-close is forwarded with
shutdown); when both directions have ended, or either fails (reset, broken pipe), both sockets are
closed. Not emulated: TCP slow start, loss, jitter.

Profiles (rates in bit/s, RTT in seconds); the chunk is 16 KiB, or 2 ms of the rate where that is more:

    lan    1 Gbit/s down, 1 Gbit/s up,  0.5 ms RTT  (a gigabit LAN; the chunk is 250 KB)
    dsl   50 Mbit/s down, 10 Mbit/s up, 20 ms RTT
    4g    30 Mbit/s down,  8 Mbit/s up, 50 ms RTT
    none  unlimited, no added latency (the proxy's own ceiling)

    with Link(9000, profile="dsl") as link:
        requests.get(f"http://127.0.0.1:{link.port}/health")
        link.bytes_up, link.bytes_down, link.connections

    python -m benchmarks.link --profile dsl --target 127.0.0.1:9000 [--port 9001]
    python -m benchmarks.link --ceiling      # the proxy's throughput: no limits (256 and 16 KiB reads), lan
"""

from __future__ import annotations

import argparse
import math
import queue
import signal
import socket
import sys
import threading
import time
from typing import NamedTuple


class Profile(NamedTuple):
    down: float | None  # bit/s server to client; None: unlimited
    up: float | None  # bit/s client to server
    rtt: float  # seconds, half of it each way
    chunk: int | None = None  # bytes per read; None: chunk_size(rate)


PROFILES = {
    "lan": Profile(1e9, 1e9, 0.0005),
    "dsl": Profile(50e6, 10e6, 0.020),
    "4g": Profile(30e6, 8e6, 0.050),
    "none": Profile(None, None, 0.0),
}
CHUNK = 16 * 1024
MAX_CHUNK = 256 * 1024


def describe(profile: Profile) -> str:
    """As "50 Mbit/s down, 10 Mbit/s up, 20 ms RTT"."""
    if profile.down is None and profile.up is None:
        rates = "unlimited"
    else:
        rates = ", ".join(
            f"{'unlimited' if rate is None else f'{rate / 1e6:g} Mbit/s'} {way}"
            for rate, way in ((profile.down, "down"), (profile.up, "up"))
        )
    return f"{rates}, {profile.rtt * 1000:g} ms RTT"


def chunk_size(rate: float | None) -> int:
    """Bytes per read: 16 KiB, or 2 ms of the rate (bytes/s) where that is more, at most 256 KiB."""
    return MAX_CHUNK if rate is None else min(MAX_CHUNK, max(CHUNK, int(rate * 0.002)))


class _Connection:
    """One proxied connection: two delay lines, four threads; both sockets closed once both directions end."""

    def __init__(self, link: Link, client: socket.socket, server: socket.socket, accepted: float):
        self.link, self.sockets, self._ended, self._lock = link, (client, server), 0, threading.Lock()
        self.accepted = accepted

    def start(self) -> None:
        profile = self.link.profile
        half = profile.rtt / 2
        up = None if profile.up is None else profile.up / 8
        down = None if profile.down is None else profile.down / 8
        client, server = self.sockets
        # The client may send once the SYN-ACK is back: one RTT after it connected.
        self._pipe(client, server, up, half, self.accepted + profile.rtt, "up")
        self._pipe(server, client, down, half, time.monotonic(), "down")

    def _pipe(self, source, dest, rate, delay, not_before, direction):
        chunk = self.link.profile.chunk or chunk_size(rate)
        slack = 0.0 if rate is None else max(2 * chunk / rate, 0.010)  # how far the reader may run ahead
        depth = 16 if rate is None else math.ceil((delay + slack) * rate / chunk) + 2
        line = queue.Queue(maxsize=depth)
        self.link._thread(self._read, source, line, chunk, rate, delay, not_before, slack)
        self.link._thread(self._write, dest, line, direction)

    def _read(self, source, line, chunk, rate, delay, not_before, slack):
        free = not_before  # when the link has sent everything scheduled so far
        while True:
            try:
                data = source.recv(chunk)
            except OSError:  # a reset (or our own close): the connection ends both ways
                data = b""
                self.close()
            now = time.monotonic()
            free = max(now, free) + (len(data) / rate if rate else 0.0)
            line.put((free + delay, data))  # blocks while the line is full: backpressure
            if not data:
                return  # the FIN (or the failure) travels the line after the data
            ahead = free - slack - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def _write(self, dest, line, direction):
        broken = False
        while True:
            due, data = line.get()
            wait = due - time.monotonic()
            if wait > 0 and not broken:
                time.sleep(wait)
            if not data:
                break
            if broken:
                continue  # drain, so that the reader is never stuck on a full line
            self.link._count(direction, len(data))  # before: whoever waits on the bytes sees them counted
            try:
                dest.sendall(data)
            except OSError:
                broken = True
                self.close()  # the receiver is gone: so is the connection, both ways
        if not broken:
            try:
                dest.shutdown(socket.SHUT_WR)  # forward the half-close
            except OSError:
                pass
        with self._lock:
            self._ended += 1
            last = self._ended == 2
        if last:
            self.close()

    def close(self) -> None:
        """Both sockets shut and closed; the readers see the end and let their writers finish."""
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.link._forget(self)


class Link:
    """A slow link to target_host:target_port, listening on 127.0.0.1:link.port, run in background threads.

    profile: a name in PROFILES or a Profile. bytes_up and bytes_down count what was delivered
    each way (all connections together); connections counts those accepted.
    """

    def __init__(self, target_port: int, profile: str | Profile = "dsl", target_host="127.0.0.1", port: int = 0):
        self.target = (target_host, target_port)
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.bytes_up = self.bytes_down = self.connections = 0
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", port), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._closing = False

    def __enter__(self) -> Link:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self._thread(self._accept)

    def _thread(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="link")
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def counts(self) -> tuple[int, int]:
        """(bytes up, bytes down) delivered so far."""
        with self._lock:
            return self.bytes_up, self.bytes_down

    def _count(self, direction: str, n: int) -> None:
        with self._lock:
            if direction == "up":
                self.bytes_up += n
            else:
                self.bytes_down += n

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._open.discard(connection)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            accepted = time.monotonic()
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # already gone
                client.close()
                continue
            with self._lock:
                self.connections += 1
            self._thread(self._connect, client, accepted)

    def _connect(self, client: socket.socket, accepted: float) -> None:
        time.sleep(self.profile.rtt / 2)  # the SYN on its way
        try:
            server = socket.create_connection(self.target, timeout=10)
            server.settimeout(None)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            time.sleep(self.profile.rtt / 2)  # the refusal on its way back
            client.close()
            return
        connection = _Connection(self, client, server, accepted)
        with self._lock:
            closing = self._closing
            self._open.add(connection)
        if closing:
            connection.close()
        else:
            connection.start()

    def close(self) -> None:
        """Stop listening, close every connection, wait for the threads (a few RTTs at most)."""
        with self._lock:
            self._closing = True
            connections = list(self._open)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self._listener.close()
        for connection in connections:
            connection.close()
        deadline = time.monotonic() + 10
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def ceiling(profile: str | Profile = "none", megabytes: int = 400) -> tuple[float, float]:
    """MB/s through a Link each way, one direction at a time, from a source to a sink thread on loopback."""
    sink = socket.create_server(("127.0.0.1", 0))
    payload = bytes(1024 * 1024)

    def serve():
        while True:
            try:
                conn, _ = sink.accept()
            except OSError:
                return
            with conn:
                if conn.recv(1) == b"d":  # send down
                    for _ in range(megabytes):
                        conn.sendall(payload)
                else:
                    buffer = bytearray(1024 * 1024)
                    while conn.recv_into(buffer):
                        pass
                    conn.sendall(b"!")

    threading.Thread(target=serve, daemon=True).start()
    rates = []
    with Link(sink.getsockname()[1], profile) as link:
        for direction in "du":
            with socket.create_connection(("127.0.0.1", link.port)) as conn:
                began = time.perf_counter()
                conn.sendall(direction.encode())
                if direction == "d":
                    buffer, got = bytearray(1024 * 1024), 0
                    while n := conn.recv_into(buffer):
                        got += n
                    assert got == megabytes * len(payload), got
                else:
                    for _ in range(megabytes):
                        conn.sendall(payload)
                    conn.shutdown(socket.SHUT_WR)
                    assert conn.recv(1) == b"!"
                rates.append(megabytes * len(payload) / 1e6 / (time.perf_counter() - began))
    sink.close()
    return rates[0], rates[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="dsl", choices=sorted(PROFILES))
    parser.add_argument("--target", help="HOST:PORT to forward to")
    parser.add_argument("--port", type=int, default=0, help="loopback port to listen on (default: a free one)")
    parser.add_argument("--ceiling", action="store_true", help="measure the proxy's own throughput and exit")
    args = parser.parse_args(argv)
    if args.ceiling:
        unlimited = PROFILES["none"]
        for name, profile in (
            ("none", unlimited),
            ("none, 16 KiB reads", unlimited._replace(chunk=CHUNK)),
            ("lan", "lan"),
        ):
            down, up = ceiling(profile)
            print(
                f"{name:<19} down {down:5.0f} MB/s ({down / 125:.2f} Gbit/s), up {up:5.0f} MB/s ({up / 125:.2f} Gbit/s)"
            )
        return 0
    if not args.target:
        parser.error("--target HOST:PORT is needed")
    host, _, port = args.target.rpartition(":")
    link = Link(int(port), args.profile, host or "127.0.0.1", args.port)
    print(
        f"{args.profile} ({describe(link.profile)}): 127.0.0.1:{link.port} -> {host}:{port} (Ctrl-C or SIGTERM stops)",
        flush=True,
    )
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    with link:
        while not stop.wait(3600):
            pass
    print(f"{link.connections} connections, {link.bytes_up} bytes up, {link.bytes_down} bytes down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
