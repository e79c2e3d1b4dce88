"""`tomaat serve --ray`: the app's steps in Ray Serve replicas, on a real Ray cluster on loopback.

One cluster for the module (a head on 127.0.0.2, two CPUs, token authentication), front ends as real
`tomaat serve` processes on real ports, real HTTP; a second node joins for the failure test and is killed
under load, as a lost machine would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from browser_support import ROOT
from conftest import assert_same_grid
from ray_support import Cluster, free_port

from tomaat.server.ray_runner import RayOptions

pytest.importorskip("ray")

APP = """
import time

import numpy as np
import SimpleITK as sitk
from tomaat import LabelVolume, PlainText, Slider, TomaatApp, Volume


class Where(TomaatApp):
    name = "Where"
    input_interface = [Volume("images"), Slider("threshold", 0, 1000), Slider("seconds", 0, 5)]
    output_interface = [LabelVolume("labels"), PlainText("node")]

    def inference(self, data):
        import ray

        time.sleep(data["seconds"])  # a GPU-bound model, in miniature
        array = sitk.GetArrayFromImage(data["images"])
        labels = sitk.GetImageFromArray((array >= data["threshold"]).astype(np.uint8))
        labels.CopyInformation(data["images"])
        data["labels"] = labels
        data["node"] = ray.util.get_node_ip_address()
        return data
"""


def phantom() -> sitk.Image:
    z, y, x = np.mgrid[:20, :24, :28]
    image = sitk.GetImageFromArray(((x * 37 + y * 11 + z * 5) % 1000).astype(np.int16))
    image.SetSpacing((0.7, 1.1, 2.5))
    image.SetOrigin((-3.5, 10.0, 20.25))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    made = Cluster(str(tmp_path_factory.mktemp("ray")))
    yield made
    made.stop()


class FrontEnd:
    def __init__(self, folder, arguments: list[str], env: dict, app: str = "where.py"):
        if app == "where.py":
            (folder / app).write_text(textwrap.dedent(APP))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "tomaat", "serve", str(folder / app), "--port", str(self.port)]
        self.log = open(folder / f"front-{self.port}.log", "w")  # noqa: SIM115 - kept for the process's life
        self.process = subprocess.Popen(
            [*command, "--listen-address", "127.0.0.1", "--no-tls", *arguments],
            cwd=ROOT, env={**env, "TMPDIR": str(folder)}, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, open(self.log.name).read()[-3000:]
            try:
                health = requests.get(self.url + "/health", timeout=2).json()
                if health["steps"]["replicas"]["running"] >= 1:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the front end did not come up: {open(self.log.name).read()[-3000:]}")

    def predict(self, threshold=500, seconds=0.0, timeout=120):
        files = {"images": ("images.mha", _mha(phantom()))}
        form = {"threshold": str(threshold), "seconds": str(seconds)}
        return requests.post(self.url + "/predict", files=files, data=form, timeout=timeout)

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
        self.log.close()
        return open(self.log.name).read()


def _mha(image: sitk.Image) -> bytes:
    from tomaat.protocol.volumes import write_image

    return write_image(image, "mha")


def labels_of(response) -> sitk.Image:
    from tomaat.protocol.outputs import decode_item

    assert response.status_code == 200, response.text[:500]
    return decode_item(response.json()[0])


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen in {timeout:g} s")


def test_two_replicas_answer_on_the_input_grid_and_health_reports_them(cluster, tmp_path):
    front = FrontEnd(tmp_path, ["--ray", cluster.address, "--replicas", "2"], cluster.env)
    try:
        wait_for(
            lambda: requests.get(front.url + "/health").json()["steps"]["replicas"]["running"] == 2, 60, "2 replicas"
        )
        labels = labels_of(front.predict(threshold=500))
        assert_same_grid(labels, phantom())
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom()) >= 500)
        steps = requests.get(front.url + "/info").json()["steps"]
        assert steps["engine"] == "ray" and steps["wanted"] == 2 and steps["cluster"] == cluster.address
    finally:
        log = front.stop()
    assert cluster.token not in log  # the cluster's token is never logged


def test_a_node_killed_under_load_loses_no_request(cluster, tmp_path):
    second = cluster.add_node("127.0.0.3", cpus=1)
    front = FrontEnd(tmp_path, ["--ray", cluster.address, "--replicas", "2"], cluster.env)
    try:
        # Serve spreads replicas over nodes; go on once one answered from each.
        seen = set()
        wait_for(lambda: seen.add(front.predict().json()[1]["content"]) or len(seen) == 2, 90, "a replica on each node")
        outcomes, threads = [], []

        def one():
            try:
                response = front.predict(seconds=1.0)
                outcomes.append((response.status_code, response.text[:300]))
            except requests.RequestException as error:  # a hang or a dropped connection fails the test below
                outcomes.append((0, repr(error)))

        for _ in range(6):
            threads.append(threading.Thread(target=one))
            threads[-1].start()
        time.sleep(0.5)  # let the requests reach both replicas before the node dies (not a wait for a result)
        second.kill()
        for thread in threads:
            thread.join(150)
        assert not any(thread.is_alive() for thread in threads), "a request hung"
        for status, text in outcomes:
            assert status == 200 or (status == 503 and "try again" in text and "Traceback" not in text), (status, text)
        assert sum(status == 200 for status, _ in outcomes) >= 3, outcomes
        labels = labels_of(front.predict())  # and the service goes on, on the node left
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom()) >= 500)
    finally:
        front.stop()


def test_the_cluster_refuses_a_wrong_token_and_serve_says_a_token_is_needed(cluster, tmp_path):
    attempt = f"import ray; ray.init(address='{cluster.address}', log_to_driver=False)"
    wrong = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 64}
    refused = subprocess.run([sys.executable, "-c", attempt], env=wrong, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "AuthenticationError" in refused.stderr + refused.stdout

    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    (tmp_path / "where.py").write_text(textwrap.dedent(APP))
    command = [sys.executable, "-m", "tomaat", "serve", str(tmp_path / "where.py"), "--ray", cluster.address]
    done = subprocess.run([*command, "--port", str(free_port()), "--no-tls"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "needs its token, in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH" in done.stderr


def test_without_an_address_a_local_instance_with_its_own_token_is_started(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    front = FrontEnd(tmp_path, ["--ray", "--ray-cpus", "1", "--ray-node-ip", "127.0.0.4"], env)
    try:
        labels = labels_of(front.predict(threshold=300))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom()) >= 300)
        assert requests.get(front.url + "/health").json()["steps"]["cluster"] == "local"
    finally:
        front.stop()
    assert subprocess.run(["pgrep", "-f", "127.0.0.4"], capture_output=True).stdout == b""  # Ray went with it


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"replicas": 0}, "--replicas 0: expected at least 1"),
        ({"min_replicas": 1}, "--min-replicas and --max-replicas go together"),
        ({"min_replicas": 3, "max_replicas": 2}, "expected 0 <= min <= max"),
        ({"gpus_per_replica": -1}, "--gpus-per-replica -1: expected 0 or more"),
    ],
)
def test_bad_replica_settings_are_refused_before_ray_starts(given, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        RayOptions(**given).check()


def test_autoscaling_and_gpus_become_serve_options():
    options = RayOptions(min_replicas=1, max_replicas=4, gpus_per_replica=1).deployment()
    assert options["autoscaling_config"]["min_replicas"] == 1 and options["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in options and options["ray_actor_options"]["num_gpus"] == 1
    assert RayOptions(replicas=3).deployment()["num_replicas"] == 3


def test_an_upstream_style_app_that_reads_files_is_refused_for_ray(tmp_path):
    from tomaat import LabelVolume, TomaatApp, TomaatService, Volume
    from tomaat.server.ray_runner import RayRunner

    service = TomaatService(app=TomaatApp(lambda d: d, lambda d: d, lambda d: d), input_interface=[Volume("images")],
                            output_interface=[LabelVolume("labels")], tls=False)  # fmt: skip
    with pytest.raises(ValueError, match="replicas elsewhere cannot open"):
        service.run_on(RayRunner("x.py", RayOptions()))


def test_a_front_end_uses_the_steps_a_cluster_deployed_itself_as_a_rayservice_would(cluster, tmp_path):
    (tmp_path / "where.py").write_text(textwrap.dedent(APP))
    deploy = (
        "import ray; from ray import serve; from tomaat.server.ray_runner import build_app; "
        f"ray.init(address='{cluster.address}', log_to_driver=False); "
        f"serve.start(proxy_location='Disabled'); serve.run(build_app({{'app': '{tmp_path / 'where.py'}'}}), "
        "name='tomaat', route_prefix=None)"
    )  # what a KubeRay RayService's serveConfigV2 names (deploy/kubernetes)
    done = subprocess.run([sys.executable, "-c", deploy], env=cluster.env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    front = FrontEnd(tmp_path, ["--ray", cluster.address, "--replicas", "3"], cluster.env)
    try:
        labels = labels_of(front.predict(threshold=700))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(phantom()) >= 700)
        assert requests.get(front.url + "/health").json()["steps"]["replicas"]["running"] == 1  # the cluster's count
    finally:
        log = front.stop()
    assert "using the application 'tomaat' the cluster runs" in log
    still = f"import ray; from ray import serve; ray.init(address='{cluster.address}'); print(sorted(serve.status().applications))"
    listed = subprocess.run([sys.executable, "-c", still], env=cluster.env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert "'tomaat'" in listed.stdout  # the front end left the cluster's application running
    remove = f"import ray; from ray import serve; ray.init(address='{cluster.address}'); serve.delete('tomaat')"
    subprocess.run([sys.executable, "-c", remove], env=cluster.env, capture_output=True, timeout=120)


BATCHING = """
import time

import numpy as np
from tomaat import PlainText, TomaatApp, Volume


class Batches(TomaatApp):
    name = "Batches"
    input_interface = [Volume("images")]
    output_interface = [PlainText("batch")]
    max_batch = 4
    max_delay_ms = 200

    def inference_batch(self, items):
        time.sleep(0.5)  # one pass of the model for the whole batch
        for item in items:
            item["batch"] = str(len(items))
        return items
"""


def test_a_replica_batches_concurrent_requests_itself(cluster, tmp_path):
    (tmp_path / "batches.py").write_text(textwrap.dedent(BATCHING))
    front = FrontEnd(tmp_path, ["--ray", cluster.address, "--replicas", "1"], cluster.env, app="batches.py")
    try:
        sizes = []

        def one():
            files = {"images": ("images.mha", _mha(phantom()))}
            answer = requests.post(front.url + "/predict", files=files, timeout=120)
            sizes.append(int(answer.json()[0]["content"]))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(sizes) == 4 and max(sizes) > 1, sizes  # requests shared passes in the one replica
    finally:
        front.stop()
