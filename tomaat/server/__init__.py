"""The prediction server: wrap a researcher's app as a TOMAAT endpoint.

`TomaatApp` is light and loads with the package, as upstream TOMAAT's apps import it
from here; the service (Klein, Twisted's web stack) loads on first use (tomaat/lazy.py).
"""

from ..lazy import exports
from .app import TomaatApp

__all__ = ["TomaatApp", "TomaatService", "TomaatServiceDelayedResponse"]

__getattr__, __dir__ = exports(
    __name__, globals(), {"TomaatService": ".service", "TomaatServiceDelayedResponse": ".service"}
)
del exports
