"""Names a package exports but imports only when first asked for (PEP 562).

`import tomaat` and `from tomaat.server import TomaatApp` are what a client
script, a notebook and every upstream-style app start with; importing the
service there would load Klein, treq, Twisted's web stack, Prometheus and
OpenSSL (0.4 s to 1.8 s, with a warm or a cold file cache) for code that may
never serve. The packages keep their names and their `dir()`, and the heavy
module loads on the first access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def exports(package: str, namespace: dict, lazy: dict[str, str]) -> tuple[Callable, Callable]:
    """(`__getattr__`, `__dir__`) for `package`, whose module globals are `namespace`.

    `lazy` maps each exported name to the module (relative to the package) it comes from;
    the value is kept in `namespace` once loaded, so only the first access costs anything.
    """

    def __getattr__(name: str):
        if name not in lazy:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(lazy[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(lazy))

    return __getattr__, __dir__
