"""The announcement registry: servers announce themselves with an API key, clients discover them.

Shares only tomaat.net.web, tomaat.net.tls and the protocol with the server and the
client, so it can be deployed on its own.
"""

from .service import RegistryService

__all__ = ["RegistryService"]
