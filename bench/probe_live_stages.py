"""What a live session's probe jobs cost and how close they get: the first retrieval and a refinement, per CPU second.

Reads finished session files (``<id>.h5``: patterns, positions, the request's beam) of a
closed-loop demo whose microscope's real probe is known (``--true`` defocus nm,
astigmatism nm, angle deg, Cs um), and runs on them, as the service would:

- the first retrieval on the first ``--first`` frames, with the full default search
  (``RetrievalOptions()``) and with the service's cheaper first stage
  (``service.settings.FIRST_RETRIEVAL``);
- a refinement on the frames from the coarse first estimate: the local Nelder-Mead
  (``service.settings.PROBE_REFINEMENT``, ``probe_refinement_method: nelder-mead``) and
  ``recon.probe_refinement.reconstruct_refining_aberrations`` (object passes alternating
  with Adam steps on the coefficients every 5 passes, over the positions nearest the
  field's centre: the service's default ``gradient`` refinement with ``--adam-passes 20
  --adam-positions 256``).

Prints one table row per (file, method): wall and CPU seconds, the aberrations and their
errors against the truth (defocus, |C12 - C12 true| as complex numbers, Cs).

    PYTHONPATH=$PWD nice -n 10 python bench/probe_live_stages.py out/demo/sessions/*.h5 --true 4 2.5 30 2
"""

from __future__ import annotations

import argparse
import json
import math
import time

import h5py
import numpy as np
import torch

from recon.aberrations import ProbeAberrations
from recon.engine import ScanChunk
from recon.grid import ObjectGrid
from recon.options import ReconOptions
from recon.probe_refinement import ProbeRefinementOptions, reconstruct_refining_aberrations
from recon.probe_retrieval import RetrievalOptions, central_indices, retrieve_aberrations
from service.settings import FIRST_RETRIEVAL, PROBE_REFINEMENT
from service.spec import Beam


def errors(a: ProbeAberrations, truth: ProbeAberrations) -> tuple[float, float, float]:
    """(defocus error nm, |C12 - C12 true| nm, Cs error um)."""
    ca, cb = a.astigmatism_cartesian_nm
    ta, tb = truth.astigmatism_cartesian_nm
    return a.defocus_nm - truth.defocus_nm, math.hypot(ca - ta, cb - tb), a.cs_um - truth.cs_um


def row(label: str, a: ProbeAberrations, truth: ProbeAberrations, wall: float, cpu: float, extra: str = "") -> str:
    d, c, s = errors(a, truth)
    return (f"| {label} | {wall:.1f} / {cpu:.1f} | {a.defocus_nm:.2f} ({d:+.2f}) | {a.astigmatism_nm:.2f} at {a.astigmatism_angle_deg:.0f} "
            f"({c:.2f}) | {a.cs_um:.2f} ({s:+.2f}) | {extra} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--true", nargs=4, type=float, required=True, metavar=("DF", "C12", "ANGLE", "CS"))
    ap.add_argument("--first", type=int, default=100, help="frames of the first retrieval")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--adam-passes", type=int, nargs="*", default=[30], help="passes of each Adam refinement row (none: no such row)")
    ap.add_argument("--adam-positions", type=int, default=512, help="the Adam refinement's positions (nearest the centre)")
    ap.add_argument("--first-options", nargs="*", default=[], help="more first stages to try: JSON RetrievalOptions fields each")
    ap.add_argument("--refine-positions", type=int, nargs="+", default=[512], help="max_positions of the local refinement (one row each)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    truth = ProbeAberrations(defocus_nm=args.true[0], astigmatism_nm=args.true[1], astigmatism_angle_deg=args.true[2], cs_um=args.true[3])
    print("| file / method | wall / CPU s | defocus nm (error) | astigmatism nm at deg (error nm) | Cs um (error) | evaluations |")
    print("|---|---|---|---|---|---|")
    for path in args.files:
        run_file(path, truth, args)


def run_file(path: str, truth: ProbeAberrations, args: argparse.Namespace) -> None:
    """The table rows of one session file."""
    with h5py.File(path, "r", locking=False) as f:
        params = json.loads(f.attrs["session_params"])
        patterns = np.asarray(f["patterns"][()], np.float32)
        positions = f["positions_nm"][()]
    beam = Beam.from_params(params)
    grid = ObjectGrid.covering(tuple(params["fov_nm"]), beam.pixel_nm, beam.detector_pixels)
    name = f"{params['strategy']}"

    def chunk(n: int) -> ScanChunk:
        return ScanChunk(torch.from_numpy(patterns[:n]), torch.from_numpy(positions[:n]), grid)

    def retrieve(n: int, options: RetrievalOptions, start: ProbeAberrations):
        wall, cpu = time.perf_counter(), time.process_time()
        r = retrieve_aberrations(chunk(n), energy_ev=beam.energy_ev, convergence_mrad=beam.convergence_mrad, start=start, options=options)
        return r, time.perf_counter() - wall, time.process_time() - cpu

    full, w, c = retrieve(args.first, RetrievalOptions(), beam.aberrations)
    print(row(f"{name}: first {args.first}, full search", full.aberrations, truth, w, c, str(len(full.evaluations))), flush=True)
    firsts = [("first stage", FIRST_RETRIEVAL)] + [(f"first stage {o}", json.loads(o)) for o in args.first_options]
    cheap = None
    for label, fields in firsts:
        result, w, c = retrieve(args.first, RetrievalOptions(**fields), beam.aberrations)
        cheap = cheap or result
        print(row(f"{name}: first {args.first}, {label}", result.aberrations, truth, w, c, str(len(result.evaluations))), flush=True)
    n = len(positions)
    for m in args.refine_positions:
        local, w, c = retrieve(n, RetrievalOptions(**(PROBE_REFINEMENT | {"max_positions": m})), cheap.aberrations)
        print(row(f"{name}: {min(m, n)} of {n}, local Nelder-Mead from the first stage", local.aberrations, truth, w, c,
                  str(len(local.evaluations))), flush=True)
    for passes in args.adam_passes:
        pick = central_indices(positions, args.adam_positions)
        sub = ScanChunk(torch.from_numpy(patterns[pick]), torch.from_numpy(positions[pick]), grid)
        wall, cpu = time.perf_counter(), time.process_time()
        adam = reconstruct_refining_aberrations(sub, cheap.aberrations, energy_ev=beam.energy_ev, convergence_mrad=beam.convergence_mrad,
                                                options=ReconOptions(iterations=passes),
                                                refinement=ProbeRefinementOptions(passes_per_block=5, max_positions=256))
        print(row(f"{name}: {len(pick)} of {n}, Adam refinement ({passes} passes) from the first stage", adam.aberrations, truth,
                  time.perf_counter() - wall, time.process_time() - cpu, f"{len(adam.history)} updates"), flush=True)

if __name__ == "__main__":
    main()
