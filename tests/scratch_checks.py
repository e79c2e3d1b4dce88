"""Proof that encoders and decoders leave no scratch folder behind, in a temp folder of the test's own."""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path, monkeypatch):
    """A temp folder of our own, so other processes' scratch folders cannot make these checks flaky."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert scratch_dirs() == set(), "a tomaat- scratch folder was left behind"


def scratch_dirs() -> set:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("tomaat-")}


@contextlib.contextmanager
def no_scratch_left():
    before = scratch_dirs()
    try:
        yield
    finally:
        assert scratch_dirs() == before
