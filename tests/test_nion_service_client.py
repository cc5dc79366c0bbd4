"""The Nion driver's service adapter (``nion_ptychoscan.service_client``) on ``ptychoscan.client``, against a real service process.

Needs no Nion package: the adapter is plain HTTP through ``Client``; its own policy (give up
when a told batch gets no frames, None for a reconstruction not there yet, a gone session's
delete, one-line ``ServiceError``) is what is checked here.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from service_process import ServiceProcess
from service_testing import KEY, frames_for, session_body

from nion_ptychoscan.service_client import ServiceClient, ServiceError
from ptychoscan.client import AskResponse


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with ServiceProcess(tmp_path_factory.mktemp("sessions")) as svc:
        yield svc


def test_a_session_to_done_with_typed_batches_and_the_reconstruction_as_an_array(service, pusher):
    client = ServiceClient(service.url, KEY, ask_timeout_s=5.0)
    try:
        sid = client.create_session(session_body(pusher.endpoint, budget=8, chunk=4))
        assert client.reconstruction(sid) is None  # nothing reconstructed yet
        series = 40
        while not (batch := client.ask(sid, deadline=time.monotonic() + 60)).done:
            assert isinstance(batch, AskResponse)
            series += 1
            client.tell(sid, batch.batch_id, series, [list(p) for p in batch.positions_nm])
            pusher.series(series, frames_for(series, len(batch.positions_nm)))
        phase, origin, pixel_nm = client.reconstruction(sid)
        status = client.status(sid)
        assert status.state == "done" and status.frames_received == 8
        assert phase.ndim == 2 and np.isfinite(phase).all() and pixel_nm > 0 and len(origin) == 2
        client.delete("no-such-session")  # a session already gone is not an error
    finally:
        client.close()


def test_ask_gives_up_when_the_told_batch_gets_no_frames_and_names_the_endpoint(service, pusher):
    client = ServiceClient(service.url, KEY, ask_timeout_s=0.2)
    said: list[str] = []
    try:
        sid = client.create_session(session_body(pusher.endpoint, budget=4, chunk=4))
        batch = client.ask(sid, deadline=time.monotonic() + 30)
        client.tell(sid, batch.batch_id, 7, [list(p) for p in batch.positions_nm])  # series 7 never comes
        t0 = time.monotonic()
        with pytest.raises(ServiceError, match=rf"no frame of batch {batch.batch_id} reached the service after 2 asks: it reads "
                                               rf"{pusher.endpoint}"):
            client.ask(sid, deadline=time.monotonic() + 60, max_idle_asks=2, say=said.append)
        assert time.monotonic() - t0 < 30 and len(said) == 2 and "told" in said[0]
        client.delete(sid)
    finally:
        client.close()


def test_refusals_and_an_unreachable_service_are_one_line_service_errors(service, pusher):
    client = ServiceClient(service.url, "wrong-key")
    try:
        with pytest.raises(ServiceError, match=r"^create session failed: HTTP 403: API key not accepted$") as refused:
            client.create_session(session_body(pusher.endpoint))
        assert refused.value.status == 403 and "\n" not in str(refused.value)
    finally:
        client.close()
    gone = ServiceClient("http://127.0.0.1:9", KEY)
    try:
        with pytest.raises(ServiceError, match=r"^session status: cannot reach http://127.0.0.1:9"):
            gone.status("abc")
    finally:
        gone.close()


def test_the_nion_driver_brings_only_the_rest_models_of_the_service():
    """The driver runs in Nion Swift's environment: ``ptychoscan.client`` may bring the REST models, never torch or the service's app."""
    import subprocess
    import sys

    from subprocess_env import REPO, repo_env

    code = ("import sys, nion_ptychoscan.driver, nion_ptychoscan.service_client; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi', 'sim_microscope', 'service', 'recon', 'policy')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=repo_env(), capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['service', 'service.models', 'service.responses']"
