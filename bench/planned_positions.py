"""The positions an evaluation strategy plans on a dataset's own raster, saved as an indices file.

Runs one strategy of ``ptychoscan evaluate``'s protocol (``policy.evaluation.run_group``)
with ``measurement="raster"``: the candidates are the file's stored positions and each
measurement is the stored pattern there (Poisson noise at ``--dose``). On a file made by
``ptychoscan simulate --jitter-nm ...`` the stored positions are the nominal ones and the
patterns were taken at the true ones, so an adaptive strategy plans, and its live
reconstruction runs, with the scan errors a microscope would have. The chosen positions
are written as a 1-D array of indices into the file (``recon.inputs.select_subset``'s
``.npy`` form), e.g. for ``bench/position_correction.py --scans planned.npy``:

    PYTHONPATH=$PWD python bench/planned_positions.py bench/out/position_correction/data/mos2_200000.h5 \\
        --strategy structure-guided --budget 500 --out bench/out/position_correction/structure_guided_200000.npy
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from policy.evaluation import EvaluationOptions, prepare_case, run_group
from recon.dataset import read_dataset


def indices_of(positions_nm: np.ndarray, raster_nm: np.ndarray, tolerance_nm: float = 1e-6) -> np.ndarray:
    """Indices into ``raster_nm`` (M, 2) of ``positions_nm`` (N, 2), each of which must be one of its rows (within ``tolerance_nm``)."""
    distance, index = cKDTree(raster_nm).query(np.asarray(positions_nm, dtype=np.float64))
    if len(index) and float(distance.max()) > tolerance_nm:
        raise ValueError(f"a planned position lies {float(distance.max()):.3g} nm from the nearest raster position (not on the raster)")
    return np.asarray(index, dtype=np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="a dataset file with ground truth")
    ap.add_argument("--strategy", default="structure-guided", help="an evaluation strategy (structure-guided, sparse-grid, random, ...)")
    ap.add_argument("--budget", type=int, default=500, help="positions")
    ap.add_argument("--chunk", type=int, default=50, help="positions per sub-sequence")
    ap.add_argument("--dose", type=float, default=1e4, help="electrons per position (Poisson)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True, help="indices .npy to write")
    args = ap.parse_args()
    if args.strategy == "adaptive":
        raise SystemExit("adaptive needs a policy checkpoint: use structure-guided or a fixed strategy")
    torch.set_num_threads(args.threads)
    wall, cpu = time.perf_counter(), time.process_time()
    dataset = read_dataset(args.dataset)
    options = EvaluationOptions(budget=args.budget, chunk=args.chunk, dose=args.dose, seeds=1, strategies=(args.strategy,), oracle=False,
                                measurement="raster")
    case = prepare_case(dataset, Path(args.dataset).stem, options, args.device)
    (run,) = run_group([case], options, device=args.device, progress=False)
    indices = indices_of(run.positions_nm, case.source.candidates_nm)
    if len(np.unique(indices)) != len(indices):
        raise RuntimeError("the strategy measured a raster position twice")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, np.sort(indices))
    print(f"{args.strategy}: {len(indices)} of {dataset.n_positions} positions -> {out}; wall {time.perf_counter() - wall:.1f} s, "
          f"cpu {time.process_time() - cpu:.1f} s")


if __name__ == "__main__":
    main()
