"""Find the app or service a user points `tomaat serve` at: `FILE_OR_MODULE[:NAME]`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys

from .app import TomaatApp
from .service import TomaatService, deferred_runs


class LoadError(Exception):
    pass


def _import_file(path: str):
    """The module a file defines, and the services it asked to run while it was imported.

    The file's folder goes first on sys.path, where `python app.py` puts it, so the file
    imports its neighbours. It stays there once the import succeeds: a served module may
    import a neighbour lazily, inside a step at request time, or unpickle weights whose
    classes live in one, long after loading returned. It goes in once, however often the
    file is loaded (tests and notebooks load many times). A failed import leaves the
    process as it found it: the folder, if this call put it there, the module, and the
    neighbours it imported go again, so the file loaded after a fix is imported afresh.
    """
    folder = os.path.dirname(path)
    name = "tomaat_user_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported as a Python module (expected a .py file)")
    loader = spec.loader
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        with deferred_runs() as ran:  # upstream's files end with `service.run()`
            loader.exec_module(module)
    except BaseException:
        if added and folder in sys.path:
            sys.path.remove(folder)
        for loaded in set(sys.modules) - before:
            file = getattr(sys.modules[loaded], "__file__", None)
            if loaded == name or (file and os.path.abspath(file).startswith(folder + os.sep)):
                del sys.modules[loaded]
        raise
    return module, ran


def _import(target: str):
    """The module, and the services it asked to run while it was imported."""
    if target.endswith(".py") or os.path.sep in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise LoadError(f"no such file: {target}")
        return _import_file(path)
    try:
        with deferred_runs() as ran:
            return importlib.import_module(target), ran
    except ModuleNotFoundError as error:
        raise LoadError(f"cannot import module {target!r}: {error}") from None


def _servable(value) -> bool:
    if isinstance(value, (TomaatApp, TomaatService)):
        return True
    return inspect.isclass(value) and issubclass(value, TomaatApp) and value is not TomaatApp


def split_spec(spec: str) -> tuple[str, str]:
    """(file or module, name) of `FILE_OR_MODULE[:NAME]`; a file whose own name holds ':' is all target."""
    target, _, name = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    return target, name


def load(spec: str):
    """A TomaatService, TomaatApp instance, or TomaatApp subclass (instantiated) named by spec."""
    target, name = split_spec(spec)
    module, ran = _import(target)
    if not name and len(ran) == 1:
        return ran[0]  # what the file serves when run as `python app.py`
    if name:
        if not hasattr(module, name):
            raise LoadError(f"{target} defines no {name!r}")
        found = getattr(module, name)
        if not _servable(found):
            raise LoadError(f"{target}:{name} is not a TomaatApp, TomaatApp subclass or TomaatService")
    else:
        candidates = {k: v for k, v in vars(module).items() if not k.startswith("_") and _servable(v)}
        candidates = {
            k: v
            for k, v in candidates.items()
            if getattr(v, "__module__", module.__name__) == module.__name__ or not inspect.isclass(v)
        }
        services = {k: v for k, v in candidates.items() if isinstance(v, TomaatService)}
        instances = {k: v for k, v in candidates.items() if isinstance(v, TomaatApp)}
        pool = services or instances or candidates
        if len(pool) != 1:
            listed = ", ".join(sorted(pool)) or "none"
            raise LoadError(f"{target}: name the app to serve as {target}:NAME (servable objects found: {listed})")
        found = next(iter(pool.values()))
    return found() if inspect.isclass(found) else found
