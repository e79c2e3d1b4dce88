"""Local demo: a registry, the threshold example announced to it, `tomaat discover`, `tomaat predict`.

    python examples/demo.py [IMAGE] [--threshold T] [--out DIR]

Without IMAGE a phantom is generated (an ellipsoid in noise, on a rotated grid
with an offset origin), so nothing needs downloading.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import SimpleITK as sitk
import treq
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def phantom() -> sitk.Image:
    rng = np.random.default_rng(7)
    z, y, x = np.mgrid[:48, :64, :64]
    inside = ((x - 30) / 18) ** 2 + ((y - 34) / 22) ** 2 + ((z - 24) / 14) ** 2 <= 1
    array = (rng.normal(100, 30, inside.shape) + 400 * inside).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 1.5))
    image.SetOrigin((-25.0, 12.5, -40.0))
    image.SetDirection((0, -1, 0, 1, 0, 0, 0, 0, 1))
    return image


def tomaat(arguments: list[str]) -> subprocess.CompletedProcess:
    """Run the `tomaat` command line as a user would, echoing the command; stop the demo if it fails."""
    shown = [a if len(a) < 60 else "..." + a[-40:] for a in arguments]
    print("  $ tomaat", " ".join(shown))
    done = subprocess.run([sys.executable, "-m", "tomaat", *arguments], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"`tomaat {arguments[0]}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_until_up(reactor, url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the process meant to serve {url} exited before it was ready")
        try:
            response = await treq.get(url + "/health")
            if response.code == 200:
                return
        except ConnectionRefusedError:
            pass  # not listening yet
        await task.deferLater(reactor, 0.1, lambda: None)
    raise SystemExit(f"nothing answered at {url} within {timeout}s")


def start(command: list[str], log_path: str) -> subprocess.Popen:
    print("  $", " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(command)))
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: the server withdraws its announcement on the way out
        process.wait(timeout=30)


async def wait_until_listed(reactor, registry_url: str, server: subprocess.Popen, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the example server exited before announcing itself")
        services = await (await treq.get(registry_url + "/discover")).json()
        if services:
            return services
        await task.deferLater(reactor, 0.1, lambda: None)
    raise SystemExit(f"the example server did not appear in {registry_url}/discover within {timeout}s")


async def run(reactor, args) -> None:
    image = sitk.ReadImage(args.image) if args.image else phantom()
    array = sitk.GetArrayViewFromImage(image)
    threshold = args.threshold if args.threshold is not None else float(array.min() + array.max()) / 2
    registry_cli = os.path.join(os.path.dirname(sys.executable), "tomaat-registry")
    processes = []
    with tempfile.TemporaryDirectory(prefix="tomaat-demo-") as state:
        try:
            print("1. an announcement registry on SQLite, and an API key for the example server")
            db = os.path.join(state, "registry.sqlite3")
            made = subprocess.run(
                [registry_cli, "keys", "create", "--owner", "demo", "--db", db],
                capture_output=True,
                text=True,
                check=True,
            )
            key_file = os.path.join(state, "api-key")
            with open(key_file, "w") as handle:
                handle.write(made.stdout.strip())
            registry_url, server_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
            command = [
                registry_cli,
                "serve",
                "--port",
                registry_url.rsplit(":", 1)[1],
                "--listen-address",
                "127.0.0.1",
                "--db",
                db,
                "--no-tls",
            ]
            processes.append(start(command, os.path.join(state, "registry.log")))
            await wait_until_up(reactor, registry_url, processes[-1])

            print("2. the threshold example, served and announced to the registry")
            command = [
                sys.executable,
                "-m",
                "tomaat",
                "serve",
                "examples/threshold.py",
                "--port",
                server_url.rsplit(":", 1)[1],
            ]
            command += [
                "--listen-address",
                "127.0.0.1",
                "--no-tls",
                "--announce",
                registry_url,
                "--api-key-file",
                key_file,
                "--public-url",
                server_url,
            ]
            processes.append(start(command, os.path.join(state, "server.log")))
            await wait_until_up(reactor, server_url, processes[-1])

            print(f"3. discovering services at {registry_url}")
            services = await wait_until_listed(reactor, registry_url, processes[-1])
            listing = tomaat(["discover", registry_url])
            print("\n".join("   " + line for line in listing.stdout.splitlines()))
            predict_url = services[0]["prediction_url"]

            volume_path = os.path.abspath(args.image) if args.image else os.path.join(state, "phantom.nii.gz")
            if not args.image:
                sitk.WriteImage(image, volume_path)
            print(f"4. sending a {'x'.join(map(str, image.GetSize()))} volume with threshold {threshold:g}")
            args.out = os.path.abspath(args.out)
            command = ["predict", predict_url, "--input", f"images={volume_path}", "--set", f"threshold={threshold:g}"]
            answer = tomaat(command + ["--out", args.out])
            print("\n".join("   " + line for line in answer.stdout.splitlines()))
            path = os.path.join(args.out, "labels.nii.gz")
            labels = sitk.ReadImage(path)
            same_grid = (
                labels.GetSize() == image.GetSize()
                and np.allclose(labels.GetSpacing(), image.GetSpacing())
                and np.allclose(labels.GetOrigin(), image.GetOrigin())
                and np.allclose(labels.GetDirection(), image.GetDirection())
            )
            print(f"   label volume written to {path} (on the input's grid: {'yes' if same_grid else 'NO'})")
            with open(os.path.join(state, "server.log")) as handle:
                timing = [line.split("tomaat.server: ", 1)[-1].strip() for line in handle if "POST /predict" in line]
            print(f"   server log: {timing[-1] if timing else '(no line)'}")
            page = urllib.request.urlopen(server_url + "/app/", timeout=10)  # another process: no reactor to block
            if sys.stdin.isatty() and sys.stdout.isatty():
                # A person at a terminal gets a link that works: the servers run until Ctrl-C.
                print(f"5. the browser page: {server_url}/app/ (drop a scan there, see the labels over it)")
                print("   the registry and the example server keep running; press Ctrl-C to stop them", flush=True)
                interrupted: defer.Deferred = defer.Deferred()
                reactor.addSystemEventTrigger("before", "shutdown", interrupted.callback, None)
                await interrupted
                print("\n   stopping the registry and the example server")
            else:
                # Not at a terminal (a script, a test): nobody could open the link, so the demo ends now.
                print(f"5. the browser page answered at {server_url}/app/ (HTTP {page.status}); the demo stops its")
                print("   servers now (not run in a terminal). To serve the page: .venv/bin/tomaat serve")
                print("   examples/threshold.py --port 9000, then open https://localhost:9000/app/")
                print("   (accept its self-signed certificate once)")
        except BaseException:
            for name in ("registry.log", "server.log"):
                log_path = os.path.join(state, name)
                if os.path.exists(log_path):
                    print(f"--- {name} ---")
                    print(open(log_path).read()[-3000:])
            raise
        finally:
            for process in reversed(processes):
                stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="any image SimpleITK reads (default: a generated phantom)")
    parser.add_argument("--threshold", type=float, help="default: 250 for the phantom, else mid-range")
    parser.add_argument("--out", default=os.path.join(ROOT, "demo-output"), help="where to write labels.nii.gz")
    args = parser.parse_args()
    if args.image is None and args.threshold is None:
        args.threshold = 250.0
    task.react(run, [args])


if __name__ == "__main__":
    main()
