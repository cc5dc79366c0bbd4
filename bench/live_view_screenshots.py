"""Screenshots of the live view mid-scan and at the end (docs/live_view_mid.png, docs/live_view_end.png).

Runs ``ptychoscan serve`` (torch reconstruction), ``ptychoscan sim-detector`` on a MoS2
specimen and ``ptychoscan sim-scan`` as processes, opens ``/live`` in headless Chromium
(Debian's, under Playwright) and saves the page after the second chunk's reconstruction
and when the session is done, as palette PNGs (well under 200 kB each).

    python bench/live_view_screenshots.py [--out docs] [--budget 120 --chunk 30]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # matplotlib's dependency

from tests.live_stack import LiveStack, browser_unavailable, launch_chromium

KEY = "screenshot-key"


def save_small(png: bytes, path: Path, colours: int = 96) -> int:
    """Write ``png`` as a palette PNG of at most ``colours`` colours; returns its size, bytes."""
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--budget", type=int, default=120)
    p.add_argument("--chunk", type=int, default=30)
    p.add_argument("--specimen", default="mos2")
    p.add_argument("--frame-time", type=float, default=0.02, help="s per frame")
    p.add_argument("--timeout-s", type=float, default=600.0)
    args = p.parse_args(argv)
    if (why := browser_unavailable()) is not None:
        print(f"cannot take screenshots: {why}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        stack = LiveStack(Path(tmp), KEY, real_reconstruction=True, specimen=args.specimen, detector_pixels=64, frame_time_s=args.frame_time)
        with stack:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": 1180, "height": 860})
            page.goto(f"{stack.url}/live#key={KEY}")
            page.wait_for_selector("#conn.on", timeout=60_000)
            t0 = time.monotonic()
            stack.start_scan(args.budget, args.chunk, strategy="adaptive", fov_nm=(0.0, 0.0, 2.0, 2.0))
            timeout_ms = args.timeout_s * 1000
            page.wait_for_function(
                "(() => { const s = document.querySelector('#d-state'); const c = document.querySelectorAll('#chunks tbody tr');"
                " return s && !['done','stopped','failed'].includes(s.textContent) && document.querySelector('#view image')"
                " && [...c].filter(r => r.children[2].textContent === 'reconstructed').length >= 2; })()",
                timeout=timeout_ms,
            )
            page.wait_for_timeout(300)  # the reconstruction image decodes
            mid = save_small(page.screenshot(full_page=True), args.out / "live_view_mid.png")
            print(f"mid-scan after {time.monotonic() - t0:.0f} s: {args.out / 'live_view_mid.png'} ({mid / 1024:.0f} kB)")
            page.wait_for_selector("#d-state.done", timeout=timeout_ms)
            page.wait_for_function(f"Number(document.querySelector('#view').dataset.drawn) === {args.budget}", timeout=60_000)
            page.wait_for_timeout(1000)  # the final reconstruction
            end = save_small(page.screenshot(full_page=True), args.out / "live_view_end.png")
            print(f"done after {time.monotonic() - t0:.0f} s: {args.out / 'live_view_end.png'} ({end / 1024:.0f} kB)")
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
