"""The floor for the latency benchmark: the least any server must spend to take a volume and answer a mask.

A bare twisted.web resource: the raw float32 body in, a NumPy threshold,
the raw uint8 mask out. No form, no image format, no JSON, no threads.
Usage: python -m benchmarks.floor PORT [CERT KEY]
"""

from __future__ import annotations

import sys

import numpy as np
from twisted.internet import reactor
from twisted.web import resource, server


class Floor(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"ok"

    def render_POST(self, request):
        threshold = float(request.getHeader(b"X-Threshold") or 500)
        volume = np.frombuffer(request.content.read(), dtype=np.float32)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return (volume >= threshold).astype(np.uint8).tobytes()


def main(argv: list[str]) -> None:
    site = server.Site(Floor())
    site.log = lambda request: None
    port = int(argv[0])
    if len(argv) == 3:
        from tomaat.net.tls import server_options

        reactor.listenSSL(port, site, server_options(argv[1], argv[2]), interface="127.0.0.1")
    else:
        reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
