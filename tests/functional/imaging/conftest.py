"""Fixtures shared by the image-path fault tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.functional.imaging.faults import FaultServer


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """An image server on 127.0.0.1 that can drop, cut, stall and lie on request."""
    s = FaultServer().start()
    yield s
    s.stop()
