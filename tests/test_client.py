"""``ptychoscan.client`` against a real service process: a session to done (sync and async), errors as typed ApiError."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError
from service_process import ServiceProcess
from service_testing import KEY, frames_for, session_body

from ptychoscan.client import ApiError, AskTimeout, AsyncClient, Client
from ptychoscan.client.calls import Call
from service.responses import SessionStatus


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with ServiceProcess(tmp_path_factory.mktemp("sessions")) as svc:
        yield svc


def test_client_runs_a_session_to_done(service, pusher):
    with Client(service.url, api_key=KEY) as c:
        assert c.health().status == "ok" and c.readiness().ready
        status = c.create_session(session_body(pusher.endpoint))
        assert isinstance(status, SessionStatus) and status.budget == 12
        series, told = 100, 0
        while not (batch := c.ask(status.session_id, poll_s=5.0, wait_s=60.0)).done:
            n = len(batch.positions_nm)
            series += 1
            assert c.tell(status.session_id, batch.batch_id, series).frames_expected == n
            pusher.series(series, frames_for(series, n))
            told += n
        final = c.session(status.session_id)
        assert final.state == "done" and final.frames_received == told == 12
        assert status.session_id in {s.session_id for s in c.sessions()}
        recon = c.reconstruction(status.session_id)
        assert recon.reconstructions == final.batches_reconstructed and len(recon.potential) == recon.shape[0]
        assert c.reconstruction_bytes(status.session_id).startswith(b"\x89PNG")
        assert sum(c.positions(status.session_id).received) == 12
        assert "ptychoscan" in c.metrics()


def test_client_errors_are_typed_with_the_problem(service, pusher):
    with Client(service.url, api_key=KEY) as c:
        with pytest.raises(ApiError) as missing:
            c.session("nope")
        assert missing.value.status == 404 and missing.value.kind == "unknown-session" and missing.value.problem.detail == "no session 'nope'"
        with pytest.raises(ApiError) as invalid:  # valid for the model, refused by the service's limits
            c.create_session(session_body("tcp://10.0.0.1:5000"))
        assert invalid.value.status == 422 and invalid.value.kind == "invalid-request"
        with pytest.raises(ApiError) as fields:  # the service's field errors, sent raw (a client's own model check skipped)
            c.send(Call("POST", "/api/v1/sessions", SessionStatus, json={"fov_nm": [0, 0, 1]}))
        assert fields.value.status == 422 and {e.loc for e in fields.value.problem.errors} == {"detector_endpoint", "fov_nm.3"}
        with pytest.raises(ValidationError):  # the shared model refuses a bad body before it is sent
            c.create_session({"detector_endpoint": "nowhere", "fov_nm": [0, 0, 1, 1]})
    with Client(service.url) as anonymous, pytest.raises(ApiError) as unauthorised:
        anonymous.create_session(session_body(pusher.endpoint))
    assert unauthorised.value.status == 401


def test_ask_honours_retry_after_until_wait_s(service, pusher):
    """No frames arrive: each long-poll answers 503 not-ready with Retry-After; ask retries, then raises it after wait_s."""
    with Client(service.url, api_key=KEY) as c:
        sid = c.create_session(session_body(pusher.endpoint)).session_id
        batch = c.ask(sid, poll_s=5.0, wait_s=30.0)
        c.tell(sid, batch.batch_id, 900)
        asks = []
        send = c.send

        def counting(call, **kw):
            if call.path.endswith("/ask"):
                asks.append(time.monotonic())
            return send(call, **kw)

        c.send = counting  # (the test passed with an ask that never retried: now it counts the polls and their spacing)
        with pytest.raises(ApiError) as busy:
            c.ask(sid, poll_s=0.2, wait_s=1.5)
        assert busy.value.status == 503 and busy.value.kind == "not-ready" and busy.value.retry_after_s is not None
        assert len(asks) >= 2, "ask retried after the 503"
        assert asks[1] - asks[0] >= 0.2 + 0.9 * busy.value.retry_after_s, "and waited Retry-After between polls"
        c.delete_session(sid)


def test_async_client_runs_a_session_to_done(service, pusher):
    async def run() -> SessionStatus:
        async with AsyncClient(service.url, api_key=KEY) as c:
            sid = (await c.create_session(session_body(pusher.endpoint, budget=6, chunk=3))).session_id
            series = 500
            while not (batch := await c.ask(sid, poll_s=5.0, wait_s=60.0)).done:
                series += 1
                await c.tell(sid, batch.batch_id, series)
                await asyncio.to_thread(pusher.series, series, frames_for(series, len(batch.positions_nm)))
            with pytest.raises(ApiError) as gone:
                await c.abandon(sid, 0)
            assert gone.value.status == 409
            return await c.session(sid)

    final = asyncio.run(run())
    assert final.state == "done" and final.frames_received == 6


def test_a_retry_after_that_is_not_a_finite_number_is_ignored():
    """'nan' and 'inf' parse as floats; time.sleep then raised ValueError/OverflowError instead of the client waiting (review)."""
    import httpx

    from ptychoscan.client.errors import MAX_RETRY_AFTER_S, retry_after

    def answer(value):
        return httpx.Response(503, headers={"Retry-After": value})

    assert retry_after(answer("nan")) is None and retry_after(answer("inf")) is None and retry_after(answer("soon")) is None
    assert retry_after(answer("2")) == 2.0 and retry_after(answer("-1")) == 0.0 and retry_after(answer("1e9")) == MAX_RETRY_AFTER_S


def test_ask_gives_up_after_the_clients_total_wait_with_what_the_session_waits_for(service, pusher):
    """A told batch whose detector never delivers: ask used to poll for ever by default; now AskTimeout after ask_wait_s, sync and async."""
    import threading

    with Client(service.url, api_key=KEY, ask_wait_s=1.5) as c:
        sid = c.create_session(session_body(pusher.endpoint)).session_id
        batch = c.ask(sid, poll_s=5.0)
        c.tell(sid, batch.batch_id, 901)
        outcome: list[BaseException | object] = []

        def ask_without_a_wait() -> None:  # no wait_s: the client's bound applies
            try:
                outcome.append(c.ask(sid, poll_s=0.2))
            except BaseException as err:
                outcome.append(err)

        worker = threading.Thread(target=ask_without_a_wait, daemon=True)
        t0 = time.monotonic()
        worker.start()
        worker.join(30.0)
        assert not worker.is_alive(), "ask kept polling past the client's total wait"
        (err,) = outcome
        assert isinstance(err, AskTimeout) and isinstance(err, ApiError) and isinstance(err, TimeoutError)
        assert err.status == 503 and err.kind == "not-ready" and err.polls >= 2 and 1.0 <= time.monotonic() - t0 < 10.0
        assert str(err).startswith(f"ask: session {sid} not ready after ")
        assert f"batch {batch.batch_id} (told as series 901) has 0 of {len(batch.positions_nm)} frames" in str(err)
        assert pusher.endpoint in str(err)
        with pytest.raises(ValueError, match="must be > 0"):
            c.ask(sid, wait_s=0)

    async def run() -> BaseException:
        async with AsyncClient(service.url, api_key=KEY, ask_wait_s=1.5) as ac:
            try:
                await asyncio.wait_for(ac.ask(sid, poll_s=0.2), 30.0)
            except AskTimeout as timeout:
                return timeout
            raise AssertionError("the async ask returned a batch although no frame arrived")

    err = asyncio.run(run())
    assert err.polls >= 2 and "has 0 of" in str(err)
    with Client(service.url, api_key=KEY) as c:
        c.delete_session(sid)
    with pytest.raises(ValueError, match="must be > 0"):
        Client(service.url, ask_wait_s=float("nan"))


def test_on_not_ready_sees_each_503_and_can_end_the_ask_sync_and_async(service, pusher):
    """The hook the Nion driver's idle-batch check rides on: called after every 503 not-ready with the poll count; raising ends the ask."""

    class Enough(Exception):
        pass

    seen: list[tuple[int, str | None, int]] = []

    def stop_at_two(err: ApiError, polls: int) -> None:
        seen.append((err.status, err.kind, polls))
        if polls == 2:
            raise Enough

    with Client(service.url, api_key=KEY) as c:
        sid = c.create_session(session_body(pusher.endpoint, budget=4, chunk=4)).session_id
        batch = c.ask(sid, poll_s=5.0)
        c.tell(sid, batch.batch_id, 9)  # series 9 never comes: every ask answers 503 not-ready
        with pytest.raises(Enough):
            c.ask(sid, poll_s=0.2, wait_s=60.0, on_not_ready=stop_at_two)
        assert seen == [(503, "not-ready", 1), (503, "not-ready", 2)]

        async def run() -> None:
            async with AsyncClient(service.url, api_key=KEY) as a:
                await a.ask(sid, poll_s=0.2, wait_s=60.0, on_not_ready=stop_at_two)

        seen.clear()
        with pytest.raises(Enough):
            asyncio.run(run())
        assert [p for _, _, p in seen] == [1, 2]
        c.delete_session(sid)
