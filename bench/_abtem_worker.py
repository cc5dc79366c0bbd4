"""abTEM side of bench/fidelity_abtem.py; runs inside bench/.venvs/abtem, never in the project's environment.

Reads a job (.npz) with the specimen and the probe positions, runs abTEM 1.0.11's
multislice at those positions with a pixelated detector, and writes (.npz):

- ``patterns_xy`` (N, C, C) float32: the centre C x C pixels of each diffraction
  pattern, in abTEM's own array order (axis 0 = kx, axis 1 = ky), zero frequency at
  (C//2, C//2); the caller transposes to the project's [ky, kx];
- ``shifted_xy`` (N, C, C) float32: the same, sampled ``shift_px`` pixels off the grid
  along both axes (see the code), for comparisons of binned patterns;
- ``total`` (N,): the sum of each full (uncropped) pattern;
- ``zero_index_xy``: where abTEM put the zero frequency in the full pattern;
- ``angular_sampling_mrad`` (2,), ``wall_s``, ``cpu_s`` (the timed scan only), ``version``.

Optional job flags (absent: the behaviour above, as bench/fidelity_abtem.py uses it):

- ``shifted_only``: run the multislice once and return only ``shifted_xy`` (unnormalised
  |FFT|^2 of the ramped exit wave; ``total`` is its full sum, equal to the unshifted
  one by Parseval); ``patterns_xy`` is then empty and the timing covers that one pass
  (bench/abtem_dataset.py);
- ``return_phase``: also return ``phase_xy`` (gx, gy) float32, sigma times abTEM's
  potential summed over its slices (rad, positive on atoms; abTEM's (x, y) array order,
  pixel [0, 0] at x = y = 0) and ``phase_sampling_a`` (2,), its pixel in Angstrom;
- ``progress``: print progress lines to stderr;
- ``defocus_a``, ``c12_a``, ``phi12_rad``, ``cs_a``: the probe's aberrations in abTEM's own
  parametrisation (``abtem.Probe(defocus=..., C12=..., phi12=..., Cs=...)``: defocus = -C10
  and the two-fold astigmatism magnitude in Angstrom, its angle in rad, C30 in Angstrom);
  absent: an in-focus, aberration-free probe;
- ``probe_gpts`` and ``probe_sampling_a``: also return ``probe_xy``, abTEM's probe wave
  (complex64, abTEM's (x, y) array order) with those aberrations on a ``probe_gpts``^2 grid
  of that sampling, built at the grid's centre position (pixel ``probe_gpts // 2``), for
  checking the aberration conventions against the project's ``recon.probe.make_probe``.

Usage: python _abtem_worker.py JOB.npz OUT.npz
"""

from __future__ import annotations

import os
import sys
import time


def main(job_path: str, out_path: str) -> None:
    import numpy as np

    job = dict(np.load(job_path))
    threads = int(job["threads"])
    os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
    import abtem
    import dask
    from abtem.core.energy import energy2sigma
    from ase import Atoms

    dask.config.set(scheduler="threads", num_workers=threads)
    abtem.config.set({"fftw.threads": 1, "diagnostics.progress_bar": False, "device": "cpu"})

    atoms = Atoms(numbers=job["numbers"], positions=job["atom_positions"], cell=job["cell"], pbc=True)
    gpts = int(job["gpts"])
    projection = str(job["projection"])
    slice_thickness = float(job["slice_thickness"])
    potential = abtem.Potential(
        atoms, gpts=(gpts, gpts), slice_thickness=slice_thickness, parametrization="lobato", projection=projection
    )
    aberrations = {
        name: float(job[key]) for key, name in (("c12_a", "C12"), ("phi12_rad", "phi12"), ("cs_a", "Cs")) if key in job
    }
    defocus = float(job["defocus_a"]) if "defocus_a" in job else 0.0
    probe = abtem.Probe(
        energy=float(job["energy_ev"]), semiangle_cutoff=float(job["convergence_mrad"]), defocus=defocus, **aberrations
    )
    probe.grid.match(potential)
    crop = int(job["crop"])
    positions = np.asarray(job["probe_positions"], dtype=np.float64)
    batch = int(job["max_batch"])
    offset = float(job["shift_px"])
    shifted_only = bool(job.get("shifted_only", False))
    return_phase = bool(job.get("return_phase", False))
    progress = bool(job.get("progress", False))

    def scan(potential_array, pos: np.ndarray, keep_waves: bool):
        waves = probe.multislice(potential_array, scan=abtem.CustomScan(pos)).compute()
        patterns = waves.diffraction_patterns(max_angle="full").compute()
        return np.asarray(patterns.array).reshape(len(pos), *patterns.array.shape[-2:]), (waves if keep_waves else None)

    # Warm-up: FFTW plans (excluded from the timing, as our side's warm-up is).
    scan(potential.build().compute(), positions[:1], False)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    potential_array = potential.build().compute()
    if shifted_only:
        full = None
        zero = (gpts // 2, gpts // 2)
    else:
        full_batches = [scan(potential_array, positions[i : i + batch], False)[0] for i in range(0, len(positions), batch)]
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        full = np.concatenate(full_batches)
        zero = (full.shape[-2] // 2, full.shape[-1] // 2)  # fftshift puts the zero frequency at N//2

    def centre(a: np.ndarray) -> np.ndarray:
        return a[:, zero[0] - crop // 2 : zero[0] - crop // 2 + crop, zero[1] - crop // 2 : zero[1] - crop // 2 + crop]

    # The same exit waves' far field sampled `offset` pixels off the grid (both axes): the
    # exit wave times exp(2 pi i offset n / N) moves every feature by +offset pixels. It
    # gives the patterns whose 2x2 blocks are centred on the zero frequency; normalised as
    # abTEM normalises its own patterns (same total).
    shifted = np.zeros((len(positions), crop, crop), dtype=np.float32)
    totals = np.zeros(len(positions))
    if offset or shifted_only:
        for i in range(0, len(positions), batch):
            waves = probe.multislice(potential_array, scan=abtem.CustomScan(positions[i : i + batch])).compute()
            psi = np.asarray(waves.array).reshape(-1, *waves.array.shape[-2:])
            nx, ny = psi.shape[-2:]
            ramp = (
                np.exp(2j * np.pi * offset * np.arange(nx) / nx)[:, None]
                * np.exp(2j * np.pi * offset * np.arange(ny) / ny)[None, :]
            )
            far = np.abs(np.fft.fftshift(np.fft.fft2(psi * ramp), axes=(-2, -1))) ** 2
            if full is not None:
                far *= (full[i : i + batch].sum(axis=(-2, -1)) / far.sum(axis=(-2, -1)))[:, None, None]
            totals[i : i + batch] = far.sum(axis=(-2, -1))
            shifted[i : i + batch] = centre(far)
            if progress:
                done = min(i + batch, len(positions))
                elapsed = time.perf_counter() - wall0
                eta = elapsed / done * (len(positions) - done)
                print(f"abTEM: {done}/{len(positions)} patterns, {elapsed:.0f} s, {done / elapsed:.2f} patterns/s, ETA {eta:.0f} s",
                      file=sys.stderr, flush=True)
    if shifted_only:
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    wavelength = float(probe.wavelength)
    sampling = np.array(probe.reciprocal_space_sampling) * wavelength * 1e3
    extra = {}
    if "probe_gpts" in job:
        n, step = int(job["probe_gpts"]), float(job["probe_sampling_a"])
        check = abtem.Probe(
            energy=float(job["energy_ev"]), semiangle_cutoff=float(job["convergence_mrad"]), defocus=defocus,
            gpts=(n, n), sampling=(step, step), **aberrations
        )
        centre_a = (n // 2) * step
        built = check.build(scan=abtem.CustomScan(np.array([[centre_a, centre_a]]))).compute()
        extra["probe_xy"] = np.asarray(built.array).reshape(n, n).astype(np.complex64)
    if return_phase:
        projected = np.asarray(potential_array.array).sum(axis=0)  # V*A, summed over the slices
        extra["phase_xy"] = (energy2sigma(float(job["energy_ev"])) * projected).astype(np.float32)
        extra["phase_sampling_a"] = np.array(potential_array.sampling, dtype=np.float64)
    np.savez(
        out_path,
        patterns_xy=np.zeros((0, crop, crop), np.float32) if full is None else centre(full).astype(np.float32),
        shifted_xy=shifted,
        total=totals if full is None else full.sum(axis=(-2, -1)),
        full_shape=np.array((gpts, gpts) if full is None else full.shape[-2:]),
        zero_index_xy=np.array(zero),
        angular_sampling_mrad=sampling,
        wall_s=wall,
        cpu_s=cpu,
        version=abtem.__version__,
        **extra,
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: _abtem_worker.py JOB.npz OUT.npz")
    main(sys.argv[1], sys.argv[2])
