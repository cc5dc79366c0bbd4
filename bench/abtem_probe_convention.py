"""Independent check of the probe's aberration conventions: abTEM 1.0.11's probe against ours.

abTEM (bench/.venvs/abtem, worker bench/_abtem_worker.py) builds its probe with the given
aberrations through ``abtem.Probe(defocus=, C12=, phi12=, Cs=)`` on the project's
reconstruction grid (K x K at lambda / (K * detector mrad/px), 60 kV, 33 mrad by
default), centred at pixel K // 2; its (x, y) array is transposed to our [y, x]. It is
compared with ``recon.probe.make_probe`` of the same numbers read with
``bench/abtem_dataset.abtem_aberrations``'s mapping, and with the readings a convention
slip would give: the astigmatism angle mirrored (phi12 -> -phi12: y flipped), swapped
(phi12 -> 90 deg - phi12: x and y exchanged) or turned by 90 deg (C12's sign), and the
whole aberration phase negated (exp(+i chi) vs exp(-i chi): the defocus sign). The
figure is the overlap |<ours, abTEM>| / (|ours| |abTEM|) (1 = the same wave up to a
global phase). ``--fixture`` saves abTEM's probe and its parameters (.npz) for
tests/test_probe_abtem_convention.py, which then checks the same without abTEM. Usage:

    PYTHONPATH=$PWD python bench/abtem_probe_convention.py [--defocus-nm 4 --astigmatism-nm 2.5 \\
        --astigmatism-angle-deg 30 --cs-um 2] [--fixture tests/fixtures/abtem_probe_aberrated.npz]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recon.aberrations import ProbeAberrations  # noqa: E402
from recon.physics import real_space_pixel_angstrom  # noqa: E402


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """|<a, b>| / (|a| |b|): 1 when the two waves are equal up to a global phase."""
    return float(abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


def readings(true: ProbeAberrations) -> dict[str, ProbeAberrations]:
    """The same numbers read as our convention, and as each convention slip would read them."""
    angle = true.astigmatism_angle_deg
    return {
        "as ours (the mapping used)": true,
        "angle mirrored (-phi12)": true.model_copy(update={"astigmatism_angle_deg": (-angle) % 180.0}),
        "x and y swapped (90 - phi12)": true.model_copy(update={"astigmatism_angle_deg": (90.0 - angle) % 180.0}),
        "C12 sign (phi12 + 90)": true.model_copy(update={"astigmatism_angle_deg": (angle + 90.0) % 180.0}),
        "chi negated (all signs)": ProbeAberrations(
            defocus_nm=-true.defocus_nm, astigmatism_nm=true.astigmatism_nm, astigmatism_angle_deg=(angle + 90.0) % 180.0,
            cs_um=-true.cs_um,
        ),
        "defocus sign only": true.model_copy(update={"defocus_nm": -true.defocus_nm}),
    }


def main() -> None:
    from abtem_dataset import CONVERGENCE_MRAD, DETECTOR_PIXELS, ENERGY_EV, PIXEL_MRAD, abtem_aberrations
    from fidelity_abtem import ensure_venv, run_abtem, specimen_and_positions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--defocus-nm", type=float, default=4.0)
    ap.add_argument("--astigmatism-nm", type=float, default=2.5)
    ap.add_argument("--astigmatism-angle-deg", type=float, default=30.0)
    ap.add_argument("--cs-um", type=float, default=2.0)
    ap.add_argument("--fixture", default=None, help="save abTEM's probe and its parameters here (.npz)")
    args = ap.parse_args()
    true = ProbeAberrations(defocus_nm=args.defocus_nm, astigmatism_nm=args.astigmatism_nm,
                            astigmatism_angle_deg=args.astigmatism_angle_deg, cs_um=args.cs_um)
    k = DETECTOR_PIXELS
    pixel_a = real_space_pixel_angstrom(ENERGY_EV, k, PIXEL_MRAD)
    ensure_venv()
    atoms, positions = specimen_and_positions(PIXEL_MRAD, 1, 0.05, 0)  # a token scan: the worker needs one
    peer = run_abtem(atoms, positions, energy_ev=ENERGY_EV, convergence_mrad=CONVERGENCE_MRAD, raw_pixels=k, shift_px=0.0,
                     gpts=256, threads=1, shifted_only=True, aberrations=abtem_aberrations(true), probe_check=(k, pixel_a))
    theirs = peer["probe"]
    print(f"abTEM {peer['version']} probe, {k}^2 at {pixel_a:.4f} A, {ENERGY_EV / 1e3:g} kV, {CONVERGENCE_MRAD:g} mrad; "
          f"true: {true.summary()}")
    for name, reading in readings(true).items():
        ours = reading.probe(k, pixel_a, ENERGY_EV, CONVERGENCE_MRAD).numpy()
        print(f"  ours read {name:<30} ({reading.summary()}): overlap {overlap(ours, theirs):.4f}")
    if args.fixture:
        Path(args.fixture).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.fixture, probe=theirs.astype(np.complex64), pixel_a=pixel_a, energy_ev=ENERGY_EV,
                            convergence_mrad=CONVERGENCE_MRAD, abtem_version=peer["version"], **true.model_dump())
        print(f"wrote {args.fixture}")


if __name__ == "__main__":
    main()
