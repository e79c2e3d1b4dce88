"""Blocking HTTP calls run in a thread, so tests on the reactor can speak exactly as real clients do."""

from __future__ import annotations

import time

import requests
import urllib3
from requests_toolbelt import MultipartEncoder
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


def slicer_post(url: str, fields: dict, headers: dict | None = None):
    """A form built as TOMAAT-Slicer builds it: requests-toolbelt's MultipartEncoder, every field as text."""

    def send():
        encoder = MultipartEncoder(fields=fields)
        headers_ = {"Content-Type": encoder.content_type, **(headers or {})}
        # Slicer trusts self-signed servers by fingerprint, not by a CA: tests check fingerprints separately.
        return requests.post(url, data=encoder, headers=headers_, verify=False)

    return deferToThread(send)


def call(method: str, url: str, **kwargs):
    kwargs.setdefault("verify", False)
    return deferToThread(requests.request, method, url, **kwargs)


async def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll condition() on the reactor until it is true, failing after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


async def collect_when_done(url: str, request_id: str, headers=None, timeout: float = 20.0):
    """POST /responses as TOMAAT-Slicer does until the delayed result is there (not a DelayedResponse any more)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await slicer_post(url + "/responses", {"request_id": request_id}, headers=headers)
        if response.headers["Content-Type"] != "application/json" or response.json()[0]["type"] != "DelayedResponse":
            return response
        assert time.monotonic() < deadline, "the delayed result never arrived"
        await task.deferLater(reactor, 0.02, lambda: None)
