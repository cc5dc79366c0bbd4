"""The live view's server side: event streams (SSE), positions, file download, the page's files, shutdown with a stream open."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_testing import AUTH, KEY, Pusher, RecordingBackend, UvicornThread, frames_for, free_port, session_body, wait_until

from service.app import create_app
from service.events import change_events, finite, sse_message
from service.feed import ChangeFeed
from service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]


class SseReader:
    """Server-sent events of an open httpx streaming response, one (event, data) at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def next(self) -> tuple[str, dict | None]:
        event, data = "message", []
        for line in self.lines:
            if line == "":
                if data:
                    return event, json.loads("\n".join(data))
                event = "message"
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        return "closed", None

    def until(self, predicate, what: str) -> dict:
        """The first session status for which ``predicate`` holds (the read timeout of the client bounds the wait)."""
        while True:
            event, data = self.next()
            if event == "closed":
                raise AssertionError(f"stream ended before {what}")
            if event == "session" and predicate(data):
                return data


@pytest.fixture
def server(tmp_path):
    settings = ServiceSettings(storage=tmp_path / "sessions", api_keys=[KEY], ask_timeout_s=5.0)
    with UvicornThread(create_app(settings, backend=RecordingBackend())) as s:
        yield s


def _run_chunk(c: httpx.Client, sid: str, pusher: Pusher, series: int) -> dict:
    ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
    assert c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH).status_code == 202
    pusher.series(series, frames_for(series, len(ask["positions_nm"])))
    return ask


def test_session_events_announce_a_completed_chunk_with_its_decision_latency(server, pusher):
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=12, chunk=5), headers=AUTH).json()["session_id"]
        with c.stream("GET", f"/api/v1/sessions/{sid}/events", headers=AUTH) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = SseReader(r)
            first = events.until(lambda s: True, "the first status")
            assert first["session_id"] == sid and first["batches_reconstructed"] == 0
            t0 = time.monotonic()
            _run_chunk(c, sid, pusher, series=1)
            done = events.until(lambda s: s["batches_reconstructed"] == 1 and s["batches_issued"] == 2, "chunk 1 reconstructed")
            waited = time.monotonic() - t0
    assert done["frames_received"] == 5 and done["state"] in ("acquiring", "reconstructing")
    chunk = done["chunks"][0]
    assert chunk["batch_id"] == 0 and chunk["positions"] == 5 and chunk["status"] == "reconstructed"
    assert chunk["decision_latency_s"] is not None and 0 <= chunk["decision_latency_s"] < 5
    assert chunk["acquisition_s"] is not None and chunk["frames_per_s"] > 0
    assert done["chunks"][1]["decision_latency_s"] is None, "the chunk just issued has no decision yet"
    assert waited < 5, "the event comes when the chunk completes, not on a slow poll"


def test_session_events_of_an_unknown_session_are_the_usual_404_problem(server):
    r = httpx.get(f"{server.url}/api/v1/sessions/nope/events", timeout=10.0)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/unknown-session") and "nope" in r.json()["detail"]
    r = httpx.get(f"{server.url}/api/v1/sessions/nope/positions", timeout=10.0)
    assert r.status_code == 404 and r.json()["type"].endswith("/unknown-session")


def test_event_streams_need_a_read_key_when_reads_are_closed(tmp_path):
    settings = ServiceSettings(storage=tmp_path / "s", api_keys=[KEY], read_api_keys=["reader"], open_reads=False)
    with UvicornThread(create_app(settings, backend=RecordingBackend())) as s, httpx.Client(base_url=s.url, timeout=10.0) as c:
        r = c.get("/api/v1/events")
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
        assert c.get("/api/v1/events", headers={"Authorization": "Apikey wrong"}).status_code == 403
        with c.stream("GET", "/api/v1/events", headers={"Authorization": "Apikey reader"}) as r:
            assert r.status_code == 200
            event, data = SseReader(r).next()
            assert event == "service" and "ingest" in data and data["buffered_frames"] == 0
        assert c.get("/live").status_code == 200, "the page itself holds no data: it needs no key"


def test_positions_and_file_download_follow_the_session(server, pusher):
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=12, chunk=5), headers=AUTH).json()["session_id"]
        ask = _run_chunk(c, sid, pusher, series=1)
        wait_until(lambda: c.get(f"/api/v1/sessions/{sid}").json()["batches_issued"] == 2, what="batch 1 issued")
        pos = c.get(f"/api/v1/sessions/{sid}/positions").json()
        assert pos["fov_nm"] == [0.0, 0.0, 1.0, 1.0] and pos["latest_batch"] == 1
        assert pos["batch"] == [0] * 5 + [1] * 5 and pos["received"] == [True] * 5 + [False] * 5
        assert np.allclose(pos["positions_nm"][:5], ask["positions_nm"])
        r = c.get(f"/api/v1/sessions/{sid}/file", headers=AUTH)
        assert r.status_code == 409 and r.json()["type"].endswith("/wrong-state"), "a file being written is not handed out"
        assert c.delete(f"/api/v1/sessions/{sid}", headers=AUTH).json()["state"] == "stopped"
        # status and positions stay open to read, the raw 4D data need a key (review: anyone on the network could pull them)
        assert c.get(f"/api/v1/sessions/{sid}/file").status_code == 401
        r = c.get(f"/api/v1/sessions/{sid}/file", headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-hdf5"
        assert r.content.startswith(b"\x89HDF\r\n\x1a\n") and f'filename="{sid}.h5"' in r.headers["content-disposition"]
        after = c.get(f"/api/v1/sessions/{sid}/positions").json()
        assert after["batch"] == pos["batch"] and after["received"] == pos["received"], "a finished session's positions come from its file"
        assert np.allclose(after["positions_nm"], pos["positions_nm"])
        assert c.get("/api/v1/sessions/nope/file", headers=AUTH).status_code == 404


def test_live_page_and_its_files_are_served_without_the_network(server):
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        page = c.get("/live")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for ref in ("/live/static/live.js", "/live/static/live.css"):
            assert ref in page.text and c.get(ref).status_code == 200
        for text in (page.text, c.get("/live/static/live.js").text, c.get("/live/static/live.css").text):
            assert not re.search(r"(src|href)=[\"']?(https?:)?//|url\(\s*[\"']?(https?:)?//|fetch\([\"']https?:", text), "no CDN: everything comes from the service"
        spec = c.get("/openapi.json").json()["paths"]
    assert "/api/v1/sessions/{session_id}/positions" in spec and "/api/v1/sessions/{session_id}/file" in spec
    assert "/api/v1/events" not in spec, "a stream that does not end is not offered to schema-driven clients"


def test_sigterm_ends_an_open_event_stream_and_the_server_exits(tmp_path):
    """Regression: uvicorn waits for open responses before the app's shutdown, so a stream that waited for it never ended."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "service_server.py"), str(tmp_path), str(port), KEY],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=90.0, interval=0.1, what="server up")  # importing torch takes > 30 s on a loaded 2-core machine
        with httpx.stream("GET", f"{url}/api/v1/events", timeout=20.0) as r:
            events = SseReader(r)
            assert events.next()[0] == "service"
            t0 = time.monotonic()
            watchdog = threading.Timer(10.0, proc.kill)  # a stream that does not end fails the test instead of hanging it
            watchdog.start()
            proc.send_signal(signal.SIGTERM)
            seen = [events.next()[0] for _ in range(2)]
            ended_after = time.monotonic() - t0
            watchdog.cancel()
        assert seen[0] == "end" and seen[1] == "closed"
        assert proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert ended_after < 3, f"the stream ended {ended_after:.1f} s after SIGTERM"


def test_change_feed_wakes_a_stream_from_another_thread_and_closing_ends_it():
    async def scenario():
        feed = ChangeFeed()
        version = {"n": 0}

        def sessions():
            return {"s": {"n": version["n"]}}

        stream = change_events(feed, sessions, poll_s=30.0, heartbeat_s=30.0)
        assert (await anext(stream)).startswith("retry:")
        assert '"n":0' in await anext(stream)
        version["n"] = 1
        t0 = time.monotonic()
        threading.Thread(target=feed.notify).start()
        assert '"n":1' in await asyncio.wait_for(anext(stream), 5)
        assert time.monotonic() - t0 < 2, "woken by the notice, not the 30 s poll"
        threading.Thread(target=feed.close).start()
        assert (await asyncio.wait_for(anext(stream), 5)).startswith("event: end")
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        assert feed.subscribers == 0

    asyncio.run(scenario())


def test_event_data_is_valid_json_even_with_a_diverged_loss():
    """Regression guard: json.dumps writes NaN, which JSON.parse in the page refuses; a diverged loss is sent as null."""
    text = sse_message("session", {"final_loss": float("nan"), "chunks": [{"x": float("inf")}]})
    assert json.loads(text.split("data: ", 1)[1]) == {"final_loss": None, "chunks": [{"x": None}]}
    assert finite((1.0, {"a": -float("inf")})) == [1.0, {"a": None}]
