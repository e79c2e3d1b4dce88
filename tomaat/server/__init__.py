"""The prediction server: wrap a researcher's app as a TOMAAT endpoint."""

from .app import TomaatApp
from .service import TomaatService, TomaatServiceDelayedResponse

__all__ = ["TomaatApp", "TomaatService", "TomaatServiceDelayedResponse"]
