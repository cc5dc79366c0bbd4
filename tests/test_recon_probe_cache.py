"""The reconstructor's cache of shifted probes changes no result, only what is computed again."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.engine import Reconstructor, ScanChunk
from recon.grid import ObjectGrid
from recon.options import ReconOptions
from recon.physics import real_space_pixel_angstrom
from recon.probe import make_probe

K = 16
PIXEL_NM = real_space_pixel_angstrom(60e3, K, 6.0) / 10


def _scan(rng: np.random.Generator, n: int) -> ScanChunk:
    fov = (0.0, 0.0, 0.5, 0.5)
    return ScanChunk(rng.random((n, K, K), dtype=np.float32) + 0.1, rng.random((n, 2)) * 0.5, ObjectGrid.covering(fov, PIXEL_NM, K))


def _recon(cache_mb: float, device) -> Reconstructor:
    probe = make_probe(K, PIXEL_NM * 10, 60e3, 33.0)
    return Reconstructor(probe, ReconOptions(iterations=2, batch_positions=4, probe_cache_mb=cache_mb), device=device)


def test_cached_probes_give_the_same_reconstruction_as_fresh_ones(monkeypatch, device):
    import recon.shifted_probes as shifted_probes

    rng = np.random.default_rng(0)
    scans = [_scan(rng, 12), _scan(rng, 9)]
    shifted = []
    original = shifted_probes.shift_probe
    monkeypatch.setattr(shifted_probes, "shift_probe", lambda spectrum, fraction, chunk, out: shifted.append(len(fraction)) or original(spectrum, fraction, chunk, out))
    cached, uncached = _recon(64.0, device), _recon(0.0, device)
    first = cached.reconstruct(scans)
    again = cached.reconstruct(scans, init=[r.potential for r in first])
    assert shifted == [21], "the second call found all 21 positions' probes in the cache"
    reference = uncached.reconstruct(scans)
    reference_again = uncached.reconstruct(scans, init=[r.potential for r in reference])
    assert shifted == [21, 21, 21], "with the cache off every call shifts its probes"
    for a, b in zip(first + again, reference + reference_again, strict=True):
        # bit for bit on the CPU; CUDA's atomic scatter adds in no fixed order, so there up to rounding
        torch.testing.assert_close(a.potential, b.potential, rtol=0, atol=0 if device == "cpu" else 1e-4)


def test_a_full_cache_starts_over_and_a_duplicate_position_is_shifted_once(device):
    recon = _recon(0.0, device)
    per_probe = K * K * 8  # complex64
    recon._probe_cache.capacity = 10  # room for 10 probes
    assert recon._probe_cache.capacity * per_probe < 2**20
    rng = np.random.default_rng(1)
    scan = _scan(rng, 6)
    scan.positions_nm[3] = scan.positions_nm[0]
    scan.patterns[3] = scan.patterns[0]
    recon.reconstruct([scan])
    assert len(recon._probe_cache.index) == 5, "6 positions, 5 distinct fractions"
    recon.reconstruct([_scan(rng, 8)])  # 5 + 8 > 10: starts over
    assert len(recon._probe_cache.index) == 8
    big = recon.reconstruct([_scan(rng, 11)])[0]  # larger than the cache: its own probes, the cache untouched
    assert len(recon._probe_cache.index) == 8 and torch.isfinite(big.potential).all()


def test_subpixel_steps_let_new_positions_reuse_probes(device):
    steps = 4  # coarse, so that 40 random positions must share fractions
    probe = make_probe(K, PIXEL_NM * 10, 60e3, 33.0)
    rounded = Reconstructor(probe, ReconOptions(iterations=1, batch_positions=4, subpixel_steps=steps), device=device)
    exact = Reconstructor(probe, ReconOptions(iterations=1, batch_positions=4), device=device)
    scan = _scan(np.random.default_rng(2), 40)
    rounded.reconstruct([scan])
    exact.reconstruct([scan])
    assert len(rounded._probe_cache.index) <= (steps + 1) ** 2 < 40 == len(exact._probe_cache.index)
    keys = np.array(list(rounded._probe_cache.index))
    np.testing.assert_allclose(keys * steps, np.round(keys * steps), atol=1e-9)  # every cached shift is on the 1/steps grid
    with pytest.raises(ValueError):
        ReconOptions(subpixel_steps=1)



def test_subpixel_steps_shrink_to_what_the_cache_holds(device, monkeypatch):
    """More rounded fractions than the cache holds would make every call shift its probes afresh (K = 256: 512 probes, 33^2 wanted)."""
    probe = make_probe(K, PIXEL_NM * 10, 60e3, 33.0)
    per_probe_mb = K * K * 8 / 2**20
    small = Reconstructor(probe, ReconOptions(subpixel_steps=32, probe_cache_mb=100 * per_probe_mb), device=device)
    assert small._probe_cache.capacity == 100 and small.subpixel_steps == 9  # (9 + 1)^2 = 100 probes fit
    roomy = Reconstructor(probe, ReconOptions(subpixel_steps=32, probe_cache_mb=2000 * per_probe_mb), device=device)
    assert roomy.subpixel_steps == 32
    assert Reconstructor(probe, ReconOptions(subpixel_steps=32, probe_cache_mb=0), device=device).subpixel_steps == 32  # no cache: as asked
    import recon.shifted_probes as shifted_probes

    shifted = []
    original = shifted_probes.shift_probe
    monkeypatch.setattr(shifted_probes, "shift_probe", lambda spectrum, fraction, chunk, out: shifted.append(len(fraction)) or original(spectrum, fraction, chunk, out))
    small.reconstruct([_scan(np.random.default_rng(3), 150)])
    cached = len(small._probe_cache.index)
    small.reconstruct([_scan(np.random.default_rng(4), 150)])  # 150 new positions, on the same 1/9 px grid
    assert sum(shifted) == len(small._probe_cache.index) <= 100, "each of the <= 100 fractions was shifted once, over both calls"
    assert shifted[0] == cached and len(shifted) <= 2
