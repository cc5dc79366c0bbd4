"""Runs inside bench/.venvs/py4dstem (py4DSTEM 0.14.18, numpy<2); called by bench/recon_py4dstem.py.

Reads an .npz (patterns (ny, nx, K, K), positions_ang (N, 2) as (row-axis, col-axis) =
(y, x), energy_ev, semiangle_mrad, angular_sampling_mrad, iterations, step_size), runs
SingleslicePtychography (object_type potential, fixed probe, gradient descent, no
filters) and writes the object with its probe-centre positions in object pixels and
the timings to an .npz: ``wall``/``cpu`` of the kept run (reset, setup included) and
``wall1``/``cpu1`` of a one-iteration run, so the caller can separate setup from the
marginal cost of an iteration.

Optional keys: ``fix_probe`` (default 1; 0: py4DSTEM refines its probe, a free complex
array, from the initial one), ``fit_probe_aberrations`` (default 0; 1: each probe update is
projected onto a fitted aberration expansion, py4DSTEM's own aberration fitting),
``defocus_ang`` (default 0: py4DSTEM's initial probe is the nominal in-focus one).
"""

import sys
import time

import numpy as np
import py4DSTEM
from py4DSTEM.process.phase import SingleslicePtychography


def main(inp: str, out: str) -> None:
    d = np.load(inp)
    datacube = py4DSTEM.DataCube(data=d["patterns"].astype(np.float32))
    datacube.calibration.set_Q_pixel_size(float(d["angular_sampling_mrad"]))
    datacube.calibration.set_Q_pixel_units("mrad")
    datacube.calibration.set_R_pixel_size(float(d["step_ang"]))
    datacube.calibration.set_R_pixel_units("A")
    ptycho = SingleslicePtychography(
        energy=float(d["energy_ev"]),
        datacube=datacube,
        semiangle_cutoff=float(d["semiangle_mrad"]),
        initial_scan_positions=d["positions_ang"].astype(np.float64),
        object_type="potential",
        defocus=float(d["defocus_ang"]) if "defocus_ang" in d else 0.0,
        device="cpu",
        verbose=False,
    )
    ptycho.preprocess(
        plot_center_of_mass=False, plot_rotation=False, plot_probe_overlaps=False, force_com_rotation=0.0, force_com_transpose=False,
        fit_function="constant",
    )
    fix_probe = bool(d["fix_probe"]) if "fix_probe" in d else True
    fit_aberrations = bool(d["fit_probe_aberrations"]) if "fit_probe_aberrations" in d else False
    probe_options = {} if fix_probe else {"fit_probe_aberrations": fit_aberrations}

    def run(iterations: int) -> tuple[float, float]:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        ptycho.reconstruct(
            num_iter=iterations, reconstruction_method="gradient-descent", step_size=float(d["step_size"]), fix_probe=fix_probe,
            gaussian_filter=False, butterworth_filter=False, tv_denoise=False, object_positivity=False, fix_potential_baseline=False,
            progress_bar=False, store_iterations=False, reset=True, seed_random=0, **probe_options,
        )
        return time.perf_counter() - wall0, time.process_time() - cpu0

    # one iteration first (its time is the setup of reconstruct + one pass), then the run that is kept
    wall1, cpu1 = run(1)
    wall, cpu = run(int(d["iterations"]))
    obj = np.asarray(ptycho.object)
    np.savez(out, object=obj.real.astype(np.float32), positions_px=np.asarray(ptycho.positions) / np.asarray(ptycho.sampling),
             positions_px_internal=np.asarray(ptycho._positions_px), sampling=np.asarray(ptycho.sampling), wall=wall, cpu=cpu, wall1=wall1, cpu1=cpu1,
             error=float(getattr(ptycho, "error", np.nan)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
