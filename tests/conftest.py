"""Shared fixtures: tiny simulated datasets, torch with few threads, each device the machine has."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(2)

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each torch device this machine has: the CPU always, CUDA where present (a GPU machine runs both)."""
    return request.param


@pytest.fixture(scope="session")
def tiny_config():
    """A small, fast SimulationConfig: 6x6 raster, 32x32 patterns, no binning."""
    from sim_microscope.datasets import SimulationConfig

    return SimulationConfig(
        scan_shape=(6, 6), step_nm=0.1, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2
    )


@pytest.fixture(scope="session")
def tiny_dataset(tiny_config):
    from sim_microscope.datasets import simulate_raster_dataset

    return simulate_raster_dataset(tiny_config, seed=3)


@pytest.fixture()
def tiny_dataset_file(tmp_path, tiny_dataset):
    from recon.dataset import write_dataset

    return write_dataset(tmp_path / "tiny.h5", tiny_dataset)


@pytest.fixture()
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def sim_detector():
    """(SimDetector, REST base URL, httpx.Client) of a simulated detector on free ports; closed afterwards."""
    import httpx

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


@pytest.fixture
def reconstructor_calls(monkeypatch):
    """Every ``Reconstructor.reconstruct`` call from now on, as ([positions per scan], passes); the calls still run."""
    from recon.engine import Reconstructor

    calls: list[tuple[list[int], int]] = []
    original = Reconstructor.reconstruct

    def spy(self, scans, init=None, iterations=None, first_pass=0):
        calls.append(([len(s.positions_nm) for s in scans], iterations or self.options.iterations))
        return original(self, scans, init=init, iterations=iterations, first_pass=first_pass)

    monkeypatch.setattr(Reconstructor, "reconstruct", spy)
    return calls


@pytest.fixture
def pusher():
    """One detector stand-in (``service_testing.Pusher``: PUSH bound on a free loopback port), closed afterwards."""
    from service_testing import Pusher

    p = Pusher()
    yield p
    p.close()


@pytest.fixture
def pushers():
    """Two detector stand-ins (``service_testing.Pusher``: PUSH bound on a free loopback port), closed afterwards."""
    from service_testing import Pusher

    ps = [Pusher(), Pusher()]
    yield ps
    for p in ps:
        p.close()
