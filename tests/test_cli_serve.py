"""`tomaat serve` as a user runs it: a real process, a real port, one log line per request, clean exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import requests
from conftest import make_phantom, v1_base64

from tomaat.server.loader import LoadError, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"server at {url} did not come up within {timeout}s")


def test_tomaat_serve_threshold_example(tmp_path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tomaat",
        "serve",
        "examples/threshold.py",
        "--port",
        str(port),
        "--no-tls",
        "--listen-address",
        "127.0.0.1",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, process)
        phantom = make_phantom()
        response = requests.post(
            url + "/predict", files={"images": (None, v1_base64(phantom)), "threshold": (None, "250")}, timeout=30
        )
        assert response.status_code == 200
        assert response.json()[1]["content"].startswith("141 voxels")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "Threshold serving on http://127.0.0.1" in output
    assert "WARNING tomaat.server: TOMAAT-Slicer does not connect to plain-HTTP prediction servers" in output
    [line] = [line for line in output.splitlines() if "POST /predict" in line]
    for stage in (
        "receive=",
        "parse=",
        "decode=",
        "preprocess=",
        "lock_wait=",
        "inference=",
        "postprocess=",
        "encode=",
    ):
        assert stage in line
    assert os.listdir(tmp_path) == []


UPSTREAM_STYLE = textwrap.dedent(
    """
    from tomaat import TomaatApp, TomaatService, Volume, PlainText

    def pre(data):
        data["n"] = data["images"].GetNumberOfPixels()
        return data

    def infer(data):
        data["text"] = str(data["n"])
        return data

    app = TomaatApp(preprocess_fun=pre, inference_fun=infer, postprocess_fun=lambda d: d)
    config = {"name": "Upstream", "modality": "CT", "task": "count", "anatomy": "any", "description": "d",
              "port": 9000, "announce": False, "api_key": "", "host": ""}
    service = TomaatService(config=config, app=app,
                            input_interface=[{"type": "volume", "destination": "images"}],
                            output_interface=[{"type": "PlainText", "field": "text"}])
    """
)


def test_loader_finds_services_apps_and_classes(tmp_path):
    upstream = tmp_path / "upstream_app.py"
    upstream.write_text(UPSTREAM_STYLE)
    service = load(str(upstream))
    assert service.info()["name"] == "Upstream"
    assert service.info()["output_interface"] == [{"type": "PlainText", "field": "text"}]

    app = load("examples/threshold.py")
    assert type(app).__name__ == "ThresholdApp"
    assert type(load("examples/threshold.py:ThresholdApp")).__name__ == "ThresholdApp"

    with pytest.raises(LoadError, match="defines no 'Nope'"):
        load("examples/threshold.py:Nope")
    with pytest.raises(LoadError, match="no such file"):
        load("missing/app.py")
    two = tmp_path / "two.py"
    two.write_text("from examples.threshold import ThresholdApp\na = ThresholdApp()\nb = ThresholdApp()\n")
    with pytest.raises(LoadError, match="name the app to serve"):
        load(str(two))


def test_serve_reports_a_bad_target_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "tomaat", "serve", "examples/threshold.py:Nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "defines no 'Nope'" in result.stderr and "Traceback" not in result.stderr


def test_an_invalid_interface_stops_the_start_with_a_clear_error(tmp_path):
    bad = tmp_path / "bad_app.py"
    bad.write_text(
        "from tomaat import TomaatApp, Volume, Slider\n"
        "class Bad(TomaatApp):\n"
        "    input_interface = [Volume('images'), Slider('t', 5, 1)]\n"
        "app = Bad()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "tomaat", "serve", str(bad), "--no-tls"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "slider 't': minimum 5 is greater than maximum 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_served_file_imports_its_neighbours_and_a_failed_import_leaves_no_trace(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "loader_eager_neighbour.py").write_text("LEVEL = 3\n")
    (served / "loader_lazy_neighbour.py").write_text("def report(n):\n    return f'{n} voxels'\n")
    (served / "good_app.py").write_text(
        "from loader_eager_neighbour import LEVEL\n"
        "from tomaat import TomaatApp\n"
        "class App(TomaatApp):\n"
        "    def postprocess(self, data):\n"
        "        import loader_lazy_neighbour  # at request time, long after the import\n"
        "        data['text'] = loader_lazy_neighbour.report(LEVEL)\n"
        "        return data\n"
        "app = App()\n"
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "loader_broken_neighbour.py").write_text("")
    (broken / "broken_app.py").write_text("import loader_broken_neighbour\nraise RuntimeError('weights missing')\n")
    names = ("loader_eager_neighbour", "loader_lazy_neighbour", "loader_broken_neighbour", "tomaat_user_good_app")
    path_before = list(sys.path)
    try:
        app = load(str(served / "good_app.py"))
        load(str(served / "good_app.py"))
        assert sys.path.count(str(served)) == 1  # kept for the lazy import, and only once
        assert app.postprocess({})["text"] == "3 voxels"

        with pytest.raises(RuntimeError, match="weights missing"):
            load(str(broken / "broken_app.py"))
        assert str(broken) not in sys.path
        assert "loader_broken_neighbour" not in sys.modules and "tomaat_user_broken_app" not in sys.modules

        # fixed, it is imported afresh: no stale neighbour from the failed attempt
        (broken / "loader_broken_neighbour.py").write_text("VALUE = 2\n")
        (broken / "broken_app.py").write_text(
            "from loader_broken_neighbour import VALUE\nfrom tomaat import TomaatApp\napp = TomaatApp()\n"
        )
        assert type(load(str(broken / "broken_app.py"))).__name__ == "TomaatApp"
    finally:
        sys.path[:] = path_before
        for name in names + ("tomaat_user_broken_app",):
            sys.modules.pop(name, None)


def test_each_plain_option_of_serve_is_its_setting_as_declared():
    """A setting is written once (server/config.py): its option's name, type, help and default come from there."""
    import dataclasses

    from tomaat.cli import SETTINGS, serve
    from tomaat.config import option_help
    from tomaat.server.config import ServiceConfig

    fields = {field.name: field for field in dataclasses.fields(ServiceConfig)}
    options = {param.name: param for param in serve.params}
    for name in SETTINGS:
        option = options[name]
        assert option.opts == ["--" + name.replace("_", "-")]
        assert option.help == option_help(fields[name]) and option.default is None  # None: the config's default
    assert "(default 8 GiB; 0: no limit)" in options["max_decoded_total"].help
    assert options["threads"].type.name == "integer" and options["app_timeout"].type.name == "float"


def test_host_is_refused_naming_the_two_options_it_could_have_meant():
    """Upstream's config key `host` is the public URL; `--host` was the address to listen on. Neither is guessed."""
    from click.testing import CliRunner

    from tomaat.cli import main
    from tomaat.registry.cli import main as registry

    for command in (main, registry):
        args = (
            ["serve", "examples/threshold.py", "--host", "127.0.0.1"] if command is main else ["serve", "--host", "x"]
        )
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 2 and "--listen-address" in result.output and "--public-url" in result.output
