"""Typed settings: built once from the config dict and the command line, checked in one place, frozen."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from examples.threshold import ThresholdApp
from tomaat.config import ConfigError
from tomaat.registry.config import RegistryConfig
from tomaat.registry.service import RegistryService
from tomaat.server.config import ServiceConfig
from tomaat.server.service import TomaatService


def test_upstreams_keys_are_aliases_of_clearly_named_settings():
    config = ServiceConfig.build({"host": "https://gpu-box:9000", "interface": "127.0.0.1", "port": "9001"})
    assert (config.public_url, config.listen_address, config.port) == ("https://gpu-box:9000", "127.0.0.1", 9001)
    assert RegistryConfig.build({"interface": "::1"}).listen_address == "::1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"port": 70000}, "setting 'port' is 70000; expected from 0 to 65535"),
        ({"threads": 0}, "setting 'threads' is 0; expected at least 1"),
        ({"tls": "yes"}, "setting 'tls' is 'yes'; expected true or false"),
        ({"max_voxels": True}, "setting 'max_voxels' is True; expected a number"),
        ({"app_timeout": "soon"}, "setting 'app_timeout' is 'soon'; expected a number"),
        ({"response_ttl": 0}, "setting 'response_ttl' is 0.0; expected a positive number"),
        ({"cert": "c.pem"}, "'cert' and 'key' go together"),
        ({"announce": True}, "'announce' needs the registry's URL"),
        ({"announce": "https://registry:8001"}, "announcing needs an api_key"),
        ({"host": "gpu-box:9000"}, "'public_url' (upstream's 'host') is 'gpu-box:9000'; expected an http(s) URL"),
    ],
)
def test_a_bad_setting_is_refused_by_name_before_anything_starts(settings, message):
    with pytest.raises(ConfigError) as caught:
        TomaatService(settings, ThresholdApp())
    assert message in str(caught.value)


def test_upstreams_config_dict_works_and_its_description_is_kept_aside(caplog):
    upstream = {
        "name": "Example TOMAAT thresholding app",
        "modality": "MRI",
        "task": "t",
        "anatomy": "a",
        "description": "d",
        "port": 9000,
        "announce": False,
        "api_key": "",
        "model_path": "/models/x",  # an app's own key: ignored, with a warning that names it
    }
    with caplog.at_level(logging.WARNING, logger="tomaat"):
        service = TomaatService(upstream, ThresholdApp())
    assert service.config.announce == "" and service.config.port == 9000
    assert service.info()["name"] == "Example TOMAAT thresholding app" and service.info()["modality"] == "MRI"
    assert "ignoring unknown setting(s) 'model_path'" in caplog.text


def test_configure_changes_settings_before_the_start_and_checks_them_again():
    service = TomaatService({"port": 9000}, ThresholdApp())
    service.configure(port=9100, threads=3, interface="127.0.0.1", name="Renamed")
    assert (service.config.port, service.config.threads, service.config.listen_address) == (9100, 3, "127.0.0.1")
    assert service.pool.max == 3 and service.info()["name"] == "Renamed"
    with pytest.raises(ConfigError, match="'threads' is -1"):
        service.configure(threads=-1)
    assert service.config.threads == 3  # unchanged by the refused change


def test_the_registry_checks_its_settings_too():
    with pytest.raises(ConfigError, match="setting 'expiry' is -5.0; expected a positive number"):
        RegistryService(expiry=-5, db=":memory:")
