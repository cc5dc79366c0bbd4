"""How much MoS2 lattice a served reconstruction PNG shows: the power of its {100} ring over the rings either side.

Reads DIR/recon.png and DIR/png_headers.txt (``X-Pixel-Nm``, as ``bench/walkthrough_recon.sh`` saves them), takes the
PNG back to one sample per reconstruction pixel (``--recon-pixel-nm``), drops the 0.1 nm margin around the field,
and compares the mean power spectrum (Hann window) in the ring |g| = 2 / (sqrt(3) a) +- 0.35 nm^-1 (a = 0.316 nm:
the 0.274 nm lattice rows) with the rings 0.6-1.2 nm^-1 inside and outside it. ~1: no lattice; the more, the more
lattice. A number to compare runs of one set-up, not an image-quality score.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from PIL import Image

LATTICE_NM = 0.316
"""MoS2 in-plane lattice constant a, nm."""


def lattice_ring_ratio(image: np.ndarray, pixel_nm: float, lattice_nm: float = LATTICE_NM) -> float:
    """Mean power in the {100} ring over the mean power in the rings beside it, for a 2-D image with ``pixel_nm``."""
    a = np.asarray(image, dtype=np.float64)
    a = a - a.mean()
    window = np.hanning(a.shape[0])[:, None] * np.hanning(a.shape[1])[None, :]
    power = np.abs(np.fft.fft2(a * window)) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(a.shape[1], pixel_nm), np.fft.fftfreq(a.shape[0], pixel_nm)))
    g = 2.0 / (np.sqrt(3.0) * lattice_nm)
    ring = power[np.abs(k - g) < 0.35]
    side = power[(np.abs(k - g) > 0.6) & (np.abs(k - g) < 1.2)]
    return float(ring.mean() / side.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path, help="folders with recon.png and png_headers.txt")
    p.add_argument("--recon-pixel-nm", type=float, default=0.04526, help="the reconstruction's pixel, nm (60 kV, 64 x 1.68 mrad)")
    p.add_argument("--margin-nm", type=float, default=0.1, help="margin around the field in the PNG, nm")
    args = p.parse_args()
    for d in args.dirs:
        headers = (d / "png_headers.txt").read_text()
        view_pixel = float(re.search(r"x-pixel-nm: ([0-9.eE+-]+)", headers, re.IGNORECASE).group(1))
        step = max(1, round(args.recon_pixel_nm / view_pixel))
        img = np.asarray(Image.open(d / "recon.png"), dtype=np.float64)[::step, ::step]
        pixel = view_pixel * step
        m = round(args.margin_nm / pixel)
        img = img[m:-m, m:-m] if m else img
        print(f"{d}: lattice ring / side power {lattice_ring_ratio(img, pixel):.1f} ({img.shape[1]} x {img.shape[0]} px of {pixel:.4f} nm)")


if __name__ == "__main__":
    main()
