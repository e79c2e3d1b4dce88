"""The browser page at /app/ on a guarded server: it signs in with an access token, in a real headless Chromium
against a real server process (tests/test_browser.py: the page on open servers)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from browser_support import Served, blob_bytes, chrome, finished, hook, needs_browser, status_when
from conftest import assert_same_grid
from test_browser import THRESHOLD, phantom

from tomaat.access.tokens import TokenStore

UNKNOWN = "tmt_" + "A" * 43  # the shape of a real token, known to no server


@pytest.fixture
def tokens(tmp_path):
    return TokenStore(str(tmp_path / "state"))


@pytest.fixture
def scan(tmp_path):
    image = phantom()
    path = str(tmp_path / "phantom.nii.gz")
    sitk.WriteImage(image, path)
    return image, path


def visible(driver, name: str) -> bool:
    found = driver.find_elements("css selector", f'[data-testid="{name}"]')
    return bool(found) and found[0].is_displayed()


def sign_in(driver, token: str) -> None:
    field = hook(driver, "token")
    assert field.get_attribute("type") == "password"
    field.send_keys(token)
    hook(driver, "sign-in").click()


def stored(driver) -> tuple[dict, dict]:
    """Everything the page keeps in sessionStorage and in localStorage."""
    script = "return [Object.assign({}, sessionStorage), Object.assign({}, localStorage)]"
    session, local = driver.execute_script(script)
    return session, local


def requested(driver) -> list[str]:
    return driver.execute_script(
        "return [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]"
        ".map((entry) => entry.name)"
    )


def choose_and_run(driver, path: str) -> str:
    status_when(driver, lambda text: "Run" in text)
    hook(driver, "input-images").send_keys(path)
    status_when(driver, lambda text: "voxels" in text)
    number = [
        e
        for e in driver.find_elements("css selector", '[data-testid="input-threshold"]')
        if e.get_attribute("type") == "number"
    ][0]
    number.clear()
    number.send_keys(str(THRESHOLD))
    return run_again(driver)


def run_again(driver) -> str:
    before = hook(driver, "status").text
    hook(driver, "run").click()
    return status_when(driver, lambda text: text != before and finished(text))


def assert_labels(driver, image, tmp_path) -> None:
    """The same check as tests/test_browser.py's: the summary, and the labels on the scan's grid."""
    expected = int((sitk.GetArrayFromImage(image) >= THRESHOLD).sum())
    assert hook(driver, "result-summary").text.endswith(
        f"{expected} voxels at or above {THRESHOLD}: {expected * 0.75 * 1.25 * 2.5 / 1000:.3f} ml"
    )
    saved = tmp_path / "labels.nii.gz"
    saved.write_bytes(blob_bytes(driver, hook(driver, "download-labels").get_attribute("href")))
    labels = sitk.ReadImage(str(saved))
    assert_same_grid(labels, image, tol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(image) >= THRESHOLD)


@needs_browser()
def test_the_page_signs_in_with_a_token_and_keeps_it_out_of_urls_logs_and_local_storage(tokens, scan, tmp_path):
    clinician = tokens.create("clinician", ["predict"])
    image, path = scan
    served = Served("examples/threshold.py", tmp_path, "--state-dir", str(tmp_path / "state"))
    driver = chrome()
    log = ""
    try:
        driver.get(served.url + "/app/")
        assert status_when(driver, lambda text: "sign in" in text) == "sign in to use this service"
        assert visible(driver, "signin") and not visible(driver, "sign-out")
        assert hook(driver, "signin-note").text == "This service lets in an access token it issued."
        assert not visible(driver, "continue-without-token")  # tokens only: nothing else would let the page in
        assert driver.find_elements("css selector", '[data-testid="input-images"]') == []  # no drop zone yet

        # a mistyped token: /info is open and says nothing of it, the first guarded request is refused
        sign_in(driver, UNKNOWN)
        assert stored(driver) == ({"tomaat-access-token": UNKNOWN}, {})
        status = choose_and_run(driver, path)
        assert status == "error: the bearer token is unknown, revoked or expired", status
        assert visible(driver, "signin")
        assert hook(driver, "signin-message").text == "the bearer token is unknown, revoked or expired"
        assert hook(driver, "token").get_attribute("value") == ""
        assert stored(driver) == ({}, {})  # the refused token is forgotten
        assert not hook(driver, "run").is_enabled()

        # the right one: the scan and the settings stay, Run again gets the labels
        sign_in(driver, clinician)
        status_when(driver, lambda text: text == "signed in: Run again")
        assert not visible(driver, "signin") and visible(driver, "sign-out")
        status = run_again(driver)
        assert status.endswith("done"), status
        assert_labels(driver, image, tmp_path)

        assert stored(driver) == ({"tomaat-access-token": clinician}, {})
        urls = requested(driver)
        assert any(url.endswith("/predict") for url in urls) and any(url.endswith("/volumes") for url in urls)
        assert not any(clinician in url or UNKNOWN in url for url in urls)
        assert not any(clinician in entry["message"] for entry in driver.get_log("browser"))
        assert clinician not in driver.page_source

        # sign out: the token leaves the tab, and the page asks again
        hook(driver, "sign-out").click()
        status_when(driver, lambda text: text == "sign in to use this service")
        assert visible(driver, "signin") and stored(driver) == ({}, {})
    finally:
        driver.quit()
        log = served.stop()
    assert "POST /predict 200" in log and "POST /predict 401" not in log  # the mistyped token never got that far
    assert "POST /volumes 401" in log
    assert clinician not in log and UNKNOWN not in log


@needs_browser()
def test_a_closed_info_is_asked_with_the_token_and_a_missing_scope_is_named(tokens, tmp_path):
    clinician = tokens.create("clinician", ["predict"])
    watcher = tokens.create("watcher", ["metrics"])
    served = Served("examples/threshold.py", tmp_path, "--state-dir", str(tmp_path / "state"), "--closed-info")
    driver = chrome(webgl=False)
    try:
        driver.get(served.url + "/app/")
        status_when(driver, lambda text: text == "sign in to use this service")
        # /info itself answers 401: its message is the note, and it names the methods
        assert hook(driver, "signin-note").text == "this service needs an identity: token (docs/security.md)"
        assert not visible(driver, "signin-message")

        sign_in(driver, UNKNOWN)  # /info is guarded now, so a mistyped token is refused at once
        message = hook(driver, "signin-message")
        status_when(driver, lambda text: message.is_displayed())
        assert message.text == "the bearer token is unknown, revoked or expired"
        assert stored(driver) == ({}, {})

        sign_in(driver, watcher)  # a token without the scope: the server's 403 names it
        status = status_when(driver, finished)
        assert status == "error: token:watcher may not do this: it needs the scope 'predict' (it has: metrics)"
        assert not visible(driver, "signin") and visible(driver, "sign-out")

        hook(driver, "sign-out").click()
        status_when(driver, lambda text: text == "sign in to use this service")
        assert stored(driver) == ({}, {})
        sign_in(driver, clinician)
        status_when(driver, lambda text: text == "choose the inputs, then Run")
        assert visible(driver, "choose-images")  # the form is built
        assert not any(clinician in url or watcher in url for url in requested(driver))
    finally:
        driver.quit()
        log = served.stop()
    assert "GET /info 401" in log
    assert clinician not in log and watcher not in log and UNKNOWN not in log


@needs_browser()
def test_a_server_that_also_lets_in_its_network_can_be_used_without_a_token(tokens, scan, tmp_path):
    tokens.create("clinician", ["predict"])
    image, path = scan
    state = str(tmp_path / "state")
    served = Served("examples/threshold.py", tmp_path, "--state-dir", state, "--allow-from", "127.0.0.1/32")
    driver = chrome()
    try:
        driver.get(served.url + "/app/")
        status_when(driver, lambda text: text == "sign in to use this service")
        assert hook(driver, "signin-note").text == (
            "This service lets in an access token it issued, or computers on the networks it trusts."
        )
        hook(driver, "continue-without-token").click()
        status = choose_and_run(driver, path)
        assert status.endswith("done"), status
        assert_labels(driver, image, tmp_path)
        assert not visible(driver, "signin") and not visible(driver, "sign-out") and stored(driver) == ({}, {})
    finally:
        driver.quit()
        served.stop()


@needs_browser()
def test_an_open_server_shows_no_sign_in(scan, tmp_path):
    image, path = scan
    served = Served("examples/threshold.py", tmp_path, "--state-dir", str(tmp_path / "state"))  # no tokens in it
    driver = chrome()
    try:
        driver.get(served.url + "/app/")
        status = choose_and_run(driver, path)
        assert status.endswith("done"), status
        assert_labels(driver, image, tmp_path)
        assert not visible(driver, "signin") and not visible(driver, "sign-out") and stored(driver) == ({}, {})
    finally:
        driver.quit()
        served.stop()
