"""Network rules: an identity for clients that cannot authenticate (TOMAAT-Slicer today), by their address.

The address is the TCP peer's. A header such as X-Forwarded-For is never believed: behind a proxy, every
client has the proxy's address, and the proxy should authenticate instead (docs/security.md).
"""

from __future__ import annotations

import ipaddress

from .identity import Identity


class NetworkError(ValueError):
    pass


def parse_networks(values) -> tuple:
    """`--allow-from` values (`10.0.0.0/8`, `192.168.1.7`, `fd00::/8`) as networks; a bad one named."""
    networks = []
    for value in values:
        for text in str(value).split(","):
            text = text.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=True))
            except ValueError as error:
                raise NetworkError(
                    f"allow_from {text[:60]!r}: {error}; expected an address or a network such as 10.1.0.0/16 or fd00::/8"
                ) from None
    return tuple(networks)


def client_address(host: str):
    """The peer's address as the rules see it: an IPv4 client reaching an IPv6 socket (::ffff:a.b.c.d) is IPv4."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def network_identity(networks, host: str, scopes: frozenset[str]) -> Identity | None:
    address = client_address(host)
    if address is None or not any(address in network for network in networks if network.version == address.version):
        return None
    return Identity(name=f"network:{address}", method="network", scopes=scopes, owner=f"network:{address}")
