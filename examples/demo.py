"""Local demo: serve examples/threshold.py, send it a volume, save the label map it returns.

    python examples/demo.py [IMAGE] [--threshold T] [--out DIR]

Without IMAGE a phantom is generated (an ellipsoid in noise, on a rotated grid
with an offset origin), so nothing needs downloading.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk
import treq
from twisted.internet import task
from twisted.internet.error import ConnectionRefusedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tomaat.protocol.outputs import decode_item  # noqa: E402
from tomaat.protocol.volumes import sniff_format, write_image  # noqa: E402


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


def volume_bytes(path: str | None, image: sitk.Image) -> bytes:
    """The file as it is when the server reads its format (no re-encoding), else the image as MHA."""
    if path:
        with open(path, "rb") as handle:
            raw = handle.read()
        if sniff_format(raw):
            return raw
    return write_image(image, "mha", compress=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_until_up(reactor, url: str, server: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the example server exited before it was ready")
        try:
            response = await treq.get(url + "/health")
            if response.code == 200:
                return
        except ConnectionRefusedError:
            pass  # not listening yet
        await task.deferLater(reactor, 0.1, lambda: None)
    raise SystemExit(f"the example server did not answer at {url} within {timeout}s")


async def run(reactor, args) -> None:
    image = sitk.ReadImage(args.image) if args.image else phantom()
    array = sitk.GetArrayViewFromImage(image)
    threshold = args.threshold if args.threshold is not None else float(array.min() + array.max()) / 2
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tomaat", "serve", "examples/threshold.py", "--port", str(port), "--no-tls"]
    command += ["--host", "127.0.0.1"]
    print("starting:", " ".join(command[1:]))
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        await wait_until_up(reactor, url, server)
        files = {"images": ("volume", "application/octet-stream", io.BytesIO(volume_bytes(args.image, image)))}
        print(f"sending a {'x'.join(map(str, image.GetSize()))} volume with threshold {threshold:g} to {url}/predict")
        response = await treq.post(url + "/predict", data={"threshold": f"{threshold:g}"}, files=files)
        items = await response.json()
        if response.code != 200:
            raise SystemExit(f"the server answered {response.code}: {items[0]['content']}")
        labels = decode_item(items[0])
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "labels.nii.gz")
        sitk.WriteImage(labels, path)
        same_grid = (
            labels.GetSize() == image.GetSize()
            and np.allclose(labels.GetSpacing(), image.GetSpacing())
            and np.allclose(labels.GetOrigin(), image.GetOrigin())
            and np.allclose(labels.GetDirection(), image.GetDirection())
        )
        print(f"{items[1]['label']}: {items[1]['content']}")
        print(f"label volume written to {path} (on the input's grid: {'yes' if same_grid else 'NO'})")
    finally:
        server.terminate()
        server.wait(timeout=30)


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
