"""Drop-to-overlay time of the browser page in headless Chromium with software WebGL (SwiftShader).

For each size, a CT-like int16 phantom is put in the page's volume input (as a drop would), the page
shows it, Run is clicked, and the clock stops when the labels are painted over the input and their
download is ready. The page times itself (performance.now(), taken after the next painted frame), so
this script's polling is not counted and the click's delay is left out. Three figures per run: until the
input is painted, from Run to the labels painted (upload, server, decoding the answer, overlay, the
.nii.gz download prepared), and their sum: the drop-to-overlay time of a user who clicks at once.

    .venv/bin/python -m benchmarks.browser            # 64^3 and 256^3, 5 runs each
    .venv/bin/python -m benchmarks.browser --quick    # 32^3, 2 runs: proves it runs (CI)
    .venv/bin/python -m benchmarks.browser --sizes 256 --runs 8 --phases   # where each run's time went
    .venv/bin/python -m benchmarks.browser --same-page   # one page, the scan dropped again each run

Needs Chromium and its driver: scripts/chromium.sh installs them (TOMAAT_TEST_CHROMEDRIVER names the driver).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk

from .support import ROOT, free_port, start


def phantom(n: int) -> sitk.Image:
    """Air at -1000 around a body with two organs and noise, on a rotated grid with an offset origin."""
    rng = np.random.default_rng(n)
    z, y, x = (np.mgrid[:n, :n, :n] / n).astype(np.float32)
    body = ((x - 0.5) / 0.4) ** 2 + ((y - 0.5) / 0.35) ** 2 + ((z - 0.5) / 0.45) ** 2 < 1
    organ = ((x - 0.6) / 0.12) ** 2 + ((y - 0.45) / 0.1) ** 2 + ((z - 0.5) / 0.15) ** 2 < 1
    array = np.where(body, 40, -1000) + np.where(organ, 200, 0) + rng.normal(0, 10, body.shape)
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing((0.75, 0.75, 1.5))
    image.SetOrigin((-96.0, 24.5, 300.25))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


def chrome(driver_path: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1400,900", "--use-angle=swiftshader",
                     "--enable-unsafe-swiftshader"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def status(driver, done, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = driver.find_element("css selector", '[data-testid="status"]').text
        if done(text):
            return text
        time.sleep(0.01)
    raise RuntimeError(f"the status line stayed at {text!r}")


def stamp(driver, name: str, timeout: float = 120.0) -> float:
    """The page's own time (ms) at which `name` was painted (data-* set on <body> after the next frame)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.find_element("tag name", "body").get_attribute(f"data-{name}")
        if value:
            return float(value)
        time.sleep(0.01)
    raise RuntimeError(f"the page never marked {name!r}")


MARKS = ("picked", "loaded", "added", "shown", "run", "uploaded", "answered", "decoded", "overlaid", "done")


def one_run(driver, url: str, path: str, reload: bool = True) -> tuple[float, float]:
    """(picked to input painted, Run to results painted) in seconds, timed by the page itself, so the
    polling of this script is not counted; Run is clicked as soon as the input is shown. Without reload,
    the scan is dropped again into the page as it stands, as a user trying another scan."""
    if reload:
        driver.get(url + "/app/")
        status(driver, lambda text: "Run" in text)
    chooser = driver.find_element("css selector", '[data-testid="input-images"]')
    driver.execute_script(
        "arguments[0].value = ''; for (const name of arguments[1]) delete document.body.dataset[name];", chooser, MARKS
    )
    chooser.send_keys(path)
    status(driver, lambda text: "voxels" in text or text.startswith("error:"))
    picked, shown = stamp(driver, "picked"), stamp(driver, "shown")
    driver.find_element("css selector", '[data-testid="run"]').click()
    text = status(driver, lambda text: text.endswith("done") or text.startswith("error:"))
    if not text.endswith("done"):
        raise RuntimeError(text)
    run, done = stamp(driver, "run"), stamp(driver, "done")
    if PHASES:
        marks = ["run", "uploaded", "answered", "decoded", "overlaid", "done"]
        at = [stamp(driver, name) for name in marks]
        steps = "  ".join(f"{b}+{(t1 - t0) / 1000:.3f}" for b, t0, t1 in zip(marks[1:], at[:-1], at[1:], strict=True))
        loaded, added = stamp(driver, "loaded"), stamp(driver, "added")
        before = f"loaded+{(loaded - picked) / 1000:.3f}  added+{(added - loaded) / 1000:.3f}  painted+{(shown - added) / 1000:.3f}"
        print(f"    picked: {before}; Run: {steps}")
    return (shown - picked) / 1000, (done - run) / 1000


PHASES = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32^3, 2 runs: only proves the benchmark runs")
    parser.add_argument("--phases", action="store_true", help="also print where each run's time went")
    parser.add_argument("--sizes", type=int, nargs="+", help="edge lengths to time (default 64 256)")
    parser.add_argument("--runs", type=int, help="runs per size (default 5)")
    parser.add_argument("--same-page", action="store_true", help="one page given the scan again each run")
    args = parser.parse_args()
    global PHASES
    PHASES = args.phases
    driver_path = os.environ.get("TOMAAT_TEST_CHROMEDRIVER") or shutil.which("chromedriver")
    if not driver_path:
        sys.exit("benchmarks.browser: no chromedriver; run scripts/chromium.sh first")
    sizes, runs = ([32], 2) if args.quick else ([64, 256], 5)
    sizes, runs = args.sizes or sizes, args.runs or runs
    folder = tempfile.mkdtemp(prefix="tomaat-browser-bench-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tomaat", "serve", "examples/threshold.py", "--port", str(port)]
    server = start([*command, "--listen-address", "127.0.0.1", "--no-tls"], url, {**os.environ, "TMPDIR": folder})
    driver = None
    try:
        print("size      shown (median)  run-to-done (median)  drop-to-overlay (median, best)")
        for n in sizes:
            path = os.path.join(folder, f"phantom{n}.nii.gz")
            sitk.WriteImage(phantom(n), path)
            times = []
            for run in range(runs):
                # A fresh browser each run, as a user opening the page (in one browser, SwiftShader's GPU
                # process is still busy with the last page's textures when the next page draws: seconds);
                # or, with --same-page, one page that is given the scan again and again.
                if not args.same_page or driver is None:
                    if driver is not None:
                        driver.quit()
                    driver = chrome(driver_path)
                times.append(one_run(driver, url, path, reload=not args.same_page or run == 0))
            shown = statistics.median(t[0] for t in times)
            work = statistics.median(t[1] for t in times)
            total = [a + b for a, b in times]
            print(
                f"{n}^3{'':<5} {shown:>8.3f} s {work:>16.3f} s {statistics.median(total):>16.3f} s, {min(total):.3f} s"
            )
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"(headless Chromium, SwiftShader WebGL2, {runs} runs each; server: examples/threshold.py, plain HTTP on loopback)"
    )
    print("OK")  # every run reached `done` (one that did not raised)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
