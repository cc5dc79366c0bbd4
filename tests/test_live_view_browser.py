"""The live view in a real browser: headless Chromium (Debian's) under Playwright, against a service, sim-detector and sim-scan processes.

Skipped, with the reason, only where Playwright or Chromium is missing outside CI;
under ``PTYCHOSCAN_REQUIRE_TOOLS=1`` (set by ``.ci/run``, which installs Chromium) a missing browser fails the test.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.live_stack import LiveStack, browser_unavailable, launch_chromium

KEY = "live-view-key"

pytestmark = pytest.mark.slow


@pytest.fixture
def browser():
    why = browser_unavailable()
    if why is not None:
        if os.environ.get("PTYCHOSCAN_REQUIRE_TOOLS") == "1":
            pytest.fail(f"the browser test must run in CI: {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


def drawn(page) -> int:
    return int(page.get_attribute("#view", "data-drawn") or 0)


def test_live_view_shows_the_session_and_its_positions_grow_without_a_reload(tmp_path, browser):
    t0 = time.monotonic()
    with LiveStack(tmp_path, KEY, frame_time_s=0.1) as stack:  # reads need the key: the page must send it
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{stack.url}/live#key={KEY}")
        page.wait_for_selector("#conn.on", timeout=20_000)
        assert "key=" not in page.url, "the key leaves the address bar once read"
        page.evaluate("window.__sameDocument = true")
        stack.start_scan(budget=40, chunk=10)  # 4 chunks of 10 frames at 0.1 s each
        row = page.wait_for_selector("#sessions tbody tr[data-session]", timeout=30_000)
        sid = row.get_attribute("data-session")
        assert page.text_content("#d-id") == sid and page.text_content("#sessions tbody tr td:nth-child(4)").startswith("sparse-grid")
        page.wait_for_function("Number(document.querySelector('#view').dataset.drawn) >= 10", timeout=30_000)
        first = drawn(page)
        page.wait_for_function(f"Number(document.querySelector('#view').dataset.drawn) > {first}", timeout=30_000)
        assert drawn(page) > first
        assert page.evaluate("window.__sameDocument") is True, "updated in place, not reloaded"
        page.wait_for_selector("#d-state.done", timeout=60_000)
        page.wait_for_function("Number(document.querySelector('#view').dataset.drawn) === 40", timeout=20_000)
        assert page.locator("#view circle.measured").count() == 40
        assert page.locator("#view image").count() == 1, "the latest reconstruction is drawn under the positions"
        assert "rad" in page.text_content("#colorbar")
        assert page.locator("#chunks tbody tr").count() == 4
        assert "done" in page.text_content("#sessions tbody tr[data-session]")
        assert stack.scan is not None and stack.scan.wait(30) == 0
        assert page.is_enabled("#dl-file") and not page.is_enabled("#stop")
        with page.expect_download() as dl:
            page.click("#dl-file")
        assert dl.value.suggested_filename == f"{sid}.h5"
    assert errors == [], errors
    print(f"browser test took {time.monotonic() - t0:.1f} s")
