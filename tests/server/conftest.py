"""Fixtures shared by the server's tests."""

from __future__ import annotations

import pytest

from ..model_server import ModelServer


@pytest.fixture(scope="module")
def served(tiny_engine):
    """The tiny model behind a serving engine's HTTP APIs, one per test module (plant answers with `served.feed`)."""
    with ModelServer(tiny_engine) as server:
        yield server
