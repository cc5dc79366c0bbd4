"""``ptychoscan simulate``: write dense-raster simulated datasets with ground truth."""

from __future__ import annotations

import argparse

# The choices, without importing sim_microscope (and torch) to build the parser; a test checks they match SPECIMEN_KINDS.
SPECIMEN_CHOICES = ("mos2", "mose2", "ws2", "wse2", "dwcnt", "flake", "particles", "grain-boundary")
SPLIT_CHOICES = ("train", "val", "test")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate dense-raster 4D-STEM datasets with ground truth",
        description="Simulate dense-raster 4D-STEM datasets (HDF5, docs/DESIGN.md section 4). Defaults are the "
        "paper's MoS2 setting: 60 kV, 33 mrad, 64x64 patterns (2x binned, 1.68 mrad/px), 100x100 raster at 0.02 nm. "
        "Specimens with room to adapt: flake (monolayer flake with a rough edge, vacuum and holes), particles "
        "(Au nanoparticles on amorphous carbon with holes), grain-boundary (two rotated MoS2 grains); dwcnt leaves "
        "vacuum beside the tube. Each file records specimen_kind, specimen_seed and vacuum_fraction.",
    )
    p.add_argument("--specimen", choices=SPECIMEN_CHOICES, default=None)
    p.add_argument(
        "--specimen-set",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a SpecimenConfig field (value in YAML), e.g. tmd_formula=WS2 or flake_vacuum_fraction=[0.3,0.5]; repeatable",
    )
    p.add_argument("--n-datasets", type=int, default=1, help="number of datasets (seeds seed, seed+1, ...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="first seed (within the split's range with --split)")
    p.add_argument(
        "--split",
        choices=SPLIT_CHOICES,
        default=None,
        help="disjoint seed ranges so that training, validation and test specimens never share a seed: specimen seed = "
        "offset + seed + index with offsets train 0, val 100000, test 200000 and seed + index < 100000; default: no offset",
    )
    p.add_argument("--config", help="SimulationConfig as YAML/TOML/JSON; flags override it")
    p.add_argument("--scan-shape", type=int, nargs=2, metavar=("NY", "NX"))
    p.add_argument("--step-nm", type=float)
    p.add_argument("--energy-ev", type=float)
    p.add_argument("--convergence-mrad", type=float)
    p.add_argument("--defocus-nm", type=float)
    p.add_argument("--detector-pixels", type=int)
    p.add_argument("--detector-pixel-mrad", type=float, help="mrad per pixel after binning")
    p.add_argument("--binning", type=int)
    p.add_argument("--oversample", type=int)
    p.add_argument("--dose-per-a2", type=float, help="electrons per A^2 (Poisson counts); default noise-free")
    truth = p.add_argument_group(
        "acquisition errors",
        "the true probe's aberrations and the scan's errors: the patterns are simulated with them, the file keeps the nominal beam "
        "(--defocus-nm, no astigmatism) and the nominal positions, and records the truth in its acquisition_truth group (scoring only)",
    )
    truth.add_argument("--true-defocus-nm", type=float, help="the true probe's defocus, nm (abTEM sign); default the nominal --defocus-nm")
    truth.add_argument("--true-astigmatism-nm", type=float, help="the true probe's two-fold astigmatism |C12|, nm")
    truth.add_argument("--true-astigmatism-angle-deg", type=float, help="its angle, deg from the scan's x axis towards y")
    truth.add_argument("--true-cs-um", type=float, help="the true probe's spherical aberration C30, um")
    truth.add_argument("--jitter-nm", type=float, help="Gaussian position jitter, standard deviation per axis, nm")
    truth.add_argument("--drift-nm-per-position", type=float, nargs=2, metavar=("DX", "DY"), help="drift per position in scan order, nm")
    truth.add_argument(
        "--scan-distortion",
        type=float,
        nargs=4,
        metavar=("DXX", "DXY", "DYX", "DYY"),
        help="linear scan distortion D: true = centre + (I + D)(nominal - centre); 0.01 0 0 0.01 is a 1 %% scale error",
    )
    truth.add_argument("--scan-error-seed", type=int, help="seed of the jitter (default 0)")
    truth.add_argument("--focal-spread-nm", type=float, help="partial coherence: standard deviation of the defocus, nm")
    truth.add_argument("--source-size-nm", type=float, help="partial coherence: standard deviation of the source per axis, nm")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(func=run)


def acquisition_error_overrides(args: argparse.Namespace, base: dict) -> dict:
    """``true_probe``, ``scan_errors`` and ``coherence`` from the flags, on top of the config file's (empty when no flag is given)."""
    probe_flags = {
        "defocus_nm": args.true_defocus_nm,
        "astigmatism_nm": args.true_astigmatism_nm,
        "astigmatism_angle_deg": args.true_astigmatism_angle_deg,
        "cs_um": args.true_cs_um,
    }
    scan_flags = {
        "jitter_nm": args.jitter_nm,
        "drift_nm_per_position": args.drift_nm_per_position,
        "distortion": args.scan_distortion,
        "seed": args.scan_error_seed,
    }
    coherence_flags = {"focal_spread_nm": args.focal_spread_nm, "source_size_nm": args.source_size_nm}
    out = {}
    for field, flags in (("true_probe", probe_flags), ("scan_errors", scan_flags), ("coherence", coherence_flags)):
        given = {key: value for key, value in flags.items() if value is not None}
        if given:
            out[field] = {**(base.get(field) or {}), **given}
    if "true_probe" in out and "defocus_nm" not in out["true_probe"]:
        nominal = args.defocus_nm if args.defocus_nm is not None else base.get("defocus_nm", 0.0)
        out["true_probe"]["defocus_nm"] = nominal  # the unstated coefficients are the nominal beam's
    if "true_probe" in out and "cs_um" not in out["true_probe"]:
        out["true_probe"]["cs_um"] = 1e3 * float(base.get("cs_mm", 0.0))
    return out


def run(args: argparse.Namespace) -> int:
    import yaml

    from ptychoscan.config import load_model, read_mapping
    from sim_microscope.datasets import SimulationConfig, positions_per_nm2, split_seeds, write_simulated_datasets

    if args.n_datasets < 1:
        raise ValueError("--n-datasets must be at least 1")
    seeds = split_seeds(args.split, args.seed, args.n_datasets)
    overrides = {
        "scan_shape": args.scan_shape,
        "step_nm": args.step_nm,
        "energy_ev": args.energy_ev,
        "convergence_mrad": args.convergence_mrad,
        "defocus_nm": args.defocus_nm,
        "detector_pixels": args.detector_pixels,
        "detector_pixel_mrad": args.detector_pixel_mrad,
        "binning": args.binning,
        "oversample": args.oversample,
        "dose_per_a2": args.dose_per_a2,
    }
    try:
        specimen = {key: yaml.safe_load(value) for key, value in args.specimen_set}
    except yaml.YAMLError as err:
        raise ValueError(f"--specimen-set: cannot parse a value ({err})".replace("\n", " ")) from None
    if args.specimen:
        specimen["kind"] = args.specimen
    base = read_mapping(args.config) if args.config else {}
    if specimen:
        overrides["specimen"] = {**base.get("specimen", {}), **specimen}
    overrides.update(acquisition_error_overrides(args, base))
    config = load_model(SimulationConfig, args.config, overrides)
    print(f"split={args.split or 'none'} seeds={seeds[0]}..{seeds[-1]} ({len(seeds)} datasets)", flush=True)

    def report(path, dataset) -> None:
        print(
            f"{path} kind={dataset.specimen_kind} seed={dataset.specimen_seed} vacuum_fraction={dataset.vacuum_fraction:.3f} "
            f"positions_per_nm2={positions_per_nm2(dataset):.1f}",
            flush=True,
        )

    write_simulated_datasets(
        config, args.n_datasets, args.out, seed=args.seed, split=args.split, device=args.device, on_dataset=report
    )
    return 0
