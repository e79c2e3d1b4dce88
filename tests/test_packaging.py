"""What a user installs: a light `import tomaat`, the service loaded on first use, one version, honest metadata."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest
from client_support import ROOT

import tomaat
import tomaat.server

# What made `import tomaat` take 1.8 s: the server's web stack, which a client script or an app file never needs.
HEAVY = ("twisted.web", "klein", "treq", "prometheus_client", "OpenSSL")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (this one has imported everything)."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    "statement",
    [
        "import tomaat",
        "from tomaat import LabelVolume, PlainText, Slider, TomaatApp, Volume",  # what our apps start with
        "from tomaat.server import TomaatApp",  # what upstream TOMAAT's apps start with
    ],
)
def test_importing_the_api_loads_no_web_stack(statement):
    loaded = modules_after(statement)
    assert "tomaat" in loaded
    assert heavy(loaded) == []


def test_the_service_loads_on_first_use():
    loaded = modules_after(
        "import tomaat\n"
        "assert tomaat.TomaatService.__module__ == 'tomaat.server.service'\n"
        "from tomaat.server import TomaatServiceDelayedResponse\n"
    )
    assert {"klein", "treq", "twisted.web.server", "prometheus_client"} <= loaded


def test_every_exported_name_is_listed_and_reachable():
    for package in (tomaat, tomaat.server):
        assert set(package.__all__) <= set(dir(package))
        assert all(getattr(package, name).__name__ == name for name in package.__all__)
    assert tomaat.TomaatApp is tomaat.server.TomaatApp
    with pytest.raises(AttributeError, match="has no attribute 'TomaatServer'"):
        tomaat.TomaatServer  # noqa: B018  (a typo is an AttributeError, not an import of something else)


def test_the_version_is_the_installed_distributions_and_above_upstreams():
    assert tomaat.__version__ == importlib.metadata.version("tomaat")
    # the unrelated upstream project on PyPI is tomaat 0.1.5: ours must sort above it
    assert tuple(int(part) for part in tomaat.__version__.split(".")[:3]) > (0, 1, 5)


def test_metadata_declares_the_licence_and_an_optional_database_driver():
    metadata = importlib.metadata.metadata("tomaat")
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (metadata.get_all("License-File") or [])
    requires = importlib.metadata.requires("tomaat")
    psycopg = [r for r in requires if r.startswith("psycopg")]
    assert psycopg == ['psycopg[binary]>=3.1; extra == "postgres"']  # SQLite registries install no driver
    assert 'tomaat[postgres]; extra == "test"' in requires  # the PostgreSQL store tests have their driver
    assert {"tomaat", "tomaat-registry"} <= {e.name for e in importlib.metadata.entry_points(group="console_scripts")}
