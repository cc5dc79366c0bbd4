"""Shared fixtures: a simulated detector with its REST server, on free ports, stopped after each test."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture
def sim_detector():
    """(SimDetector, REST base URL, httpx.Client) on free ports; everything closed afterwards."""
    from sim_microscope.detector import SimDetector
    from sim_microscope.frame_source import SyntheticSource
    from sim_microscope.simplon_api import ServerThread, create_app

    detector = SimDetector(SyntheticSource(64), port=0, seed=1)
    server = ServerThread(create_app(detector)).start()
    client = httpx.Client(base_url=server.url, timeout=30.0)
    try:
        yield detector, server.url, client
    finally:
        client.close()
        server.stop()
        detector.close()
