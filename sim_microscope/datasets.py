"""Dense-raster simulated datasets with ground truth, in the docs/DESIGN.md section 4 format.

Seed splits: training, validation and test specimens come from disjoint seed ranges,
``SPLIT_SEED_OFFSETS[split] + seed + index`` with ``seed + index`` in [0, SPLIT_SEED_RANGE)
(train 0-99 999, val 100 000-199 999, test 200 000-299 999), so no specimen of one split
is ever built from a seed of another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from recon.aberrations import ProbeAberrations
from recon.coherence import PartialCoherence
from recon.dataset import AcquisitionTruth, Dataset4D, GroundTruth, write_dataset
from recon.physics import real_space_pixel_angstrom
from sim_microscope.scan_errors import ScanErrors
from sim_microscope.simulate import simulate_scan
from sim_microscope.specimens import SpecimenConfig, build_specimen
from sim_microscope.vacuum import vacuum_fraction

SPLIT_SEED_RANGE = 100_000
SPLIT_SEED_OFFSETS: dict[str, int] = {"train": 0, "val": SPLIT_SEED_RANGE, "test": 2 * SPLIT_SEED_RANGE}


class SimulationConfig(BaseModel):
    """A dense-raster acquisition. Defaults: the paper's experimental MoS2 setting."""

    energy_ev: float = Field(60_000.0, gt=0, description="beam energy, eV")
    convergence_mrad: float = Field(33.0, gt=0, description="probe semi-angle, mrad")
    defocus_nm: float = Field(0.0, description="defocus, nm (abTEM sign)")
    cs_mm: float = Field(0.0, description="spherical aberration C30, mm")
    detector_pixels: int = Field(64, ge=4, description="K, pixels per side after binning")
    detector_pixel_mrad: float = Field(1.68, gt=0, description="mrad per pixel after binning (0.84 before 2x binning)")
    binning: int = Field(2, ge=1, description="detector binning factor")
    oversample: int | None = Field(None, ge=1, description="potential sampling factor; None: automatic")
    scan_shape: tuple[int, int] = Field((100, 100), description="(ny, nx) raster positions")
    step_nm: float = Field(0.02, gt=0, description="raster step, nm")
    dose_per_a2: float | None = Field(None, gt=0, description="electrons per A^2 over the whole raster; None: noise-free")
    specimen: SpecimenConfig = SpecimenConfig()
    specimen_margin_nm: float = Field(0.3, ge=0, description="specimen beyond the probe window around the raster, nm")
    true_probe: ProbeAberrations | None = Field(
        None,
        description="the probe's real aberrations, when they differ from the nominal beam (defocus_nm, cs_mm, no astigmatism): the "
        "patterns are simulated with them, the file's beam attributes and probe stay nominal, the truth goes to acquisition_truth",
    )
    scan_errors: ScanErrors | None = Field(
        None, description="jitter, drift and distortion of the scan: patterns at the true positions, the file's positions_nm nominal"
    )
    coherence: PartialCoherence | None = Field(
        None, description="partial coherence of the real probe (focal spread, source size): patterns add the intensities of the "
        "coherent probes it spans; the file's probe stays coherent"
    )

    @property
    def nominal_aberrations(self) -> ProbeAberrations:
        """The aberrations the nominal beam claims: defocus_nm and cs_mm, no astigmatism."""
        return ProbeAberrations(defocus_nm=self.defocus_nm, cs_um=self.cs_mm * 1e3)

    @property
    def has_acquisition_errors(self) -> bool:
        """True when the true probe or positions differ from the nominal ones (the file then records acquisition_truth)."""
        return (
            (self.true_probe is not None and self.true_probe != self.nominal_aberrations)
            or (self.scan_errors is not None and not self.scan_errors.is_zero)
            or (self.coherence is not None and not self.coherence.is_coherent)
        )

    @property
    def pixel_nm(self) -> float:
        """Reconstruction pixel in nm."""
        return real_space_pixel_angstrom(self.energy_ev, self.detector_pixels, self.detector_pixel_mrad) / 10.0

    @property
    def raster_extent_nm(self) -> tuple[float, float]:
        ny, nx = self.scan_shape
        return (nx - 1) * self.step_nm, (ny - 1) * self.step_nm

    def specimen_size_nm(self) -> tuple[float, float]:
        """Field the specimen must cover: raster + probe window + margin on each side."""
        window_nm = self.detector_pixels * self.pixel_nm
        ex, ey = self.raster_extent_nm
        pad = window_nm + 2 * self.specimen_margin_nm
        return ex + pad, ey + pad


def split_seeds(split: str | None, seed: int, n_datasets: int) -> list[int]:
    """Specimen seeds of ``n_datasets`` datasets starting at ``seed`` within a split.

    ``split`` None: seed, seed + 1, ... as given (no range check). A split adds its
    offset (SPLIT_SEED_OFFSETS) and requires 0 <= seed and seed + n_datasets <=
    SPLIT_SEED_RANGE, so the splits' seeds never overlap.
    """
    if n_datasets < 1:
        raise ValueError(f"n_datasets must be at least 1, got {n_datasets}")
    if split is None:
        return [seed + i for i in range(n_datasets)]
    if split not in SPLIT_SEED_OFFSETS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEED_OFFSETS)}")
    if seed < 0 or seed + n_datasets > SPLIT_SEED_RANGE:
        raise ValueError(f"with a split, seed .. seed + n_datasets - 1 must lie in [0, {SPLIT_SEED_RANGE - 1}], got {seed}..{seed + n_datasets - 1}")
    return [SPLIT_SEED_OFFSETS[split] + seed + i for i in range(n_datasets)]


def positions_per_nm2(dataset: Dataset4D) -> float:
    """Probe positions per nm^2 of their bounding box (the raster's field; inf for a line or a point)."""
    extent = np.ptp(np.asarray(dataset.positions_nm), axis=0)
    area = float(extent[0] * extent[1])
    return dataset.n_positions / area if area > 0 else float("inf")


def raster_positions_nm(scan_shape: tuple[int, int], step_nm: float, origin_nm: tuple[float, float]) -> np.ndarray:
    """Row-major raster of (x, y) positions in nm: row i (y) then column j (x)."""
    ny, nx = scan_shape
    ys, xs = np.meshgrid(np.arange(ny) * step_nm, np.arange(nx) * step_nm, indexing="ij")
    return np.column_stack([xs.ravel() + origin_nm[0], ys.ravel() + origin_nm[1]])


def raster_specimen(config: SimulationConfig, seed: int) -> tuple[Atoms, np.ndarray]:
    """The specimen (seeded) of a raster dataset and the raster's nominal (N, 2) positions (x, y), nm, in its frame.

    The specimen covers the raster, the probe window and a margin; its features are placed in the raster's field.
    """
    size = config.specimen_size_nm()
    ex, ey = config.raster_extent_nm
    specimen_config = config.specimen.model_copy(update={"size_nm": size, "region_nm": (ex, ey)})
    atoms = build_specimen(specimen_config, seed=seed)
    origin = ((size[0] - ex) / 2, (size[1] - ey) / 2)
    return atoms, raster_positions_nm(config.scan_shape, config.step_nm, origin)


def simulate_raster_dataset(config: SimulationConfig, seed: int, *, progress: bool = False, device=None) -> Dataset4D:
    """Simulate one dense-raster dataset of a freshly built specimen (seeded).

    The specimen's features (flake edge, particles, grain boundary) are placed in the
    raster's field; the dataset records the specimen's kind, seed and the vacuum
    fraction of the raster's field (``sim_microscope.vacuum.vacuum_fraction``).
    With ``config.true_probe`` or ``config.scan_errors`` the patterns are simulated with
    the true probe at the true positions; the dataset's beam, ``probe`` and
    ``positions_nm`` stay nominal and the truth is in ``acquisition_truth``.
    """
    atoms, positions = raster_specimen(config, seed)
    true_positions = positions if config.scan_errors is None else config.scan_errors.true_positions(positions)
    true_probe = config.true_probe or config.nominal_aberrations
    dose_per_pattern = None if config.dose_per_a2 is None else config.dose_per_a2 * (config.step_nm * 10.0) ** 2
    result = simulate_scan(
        atoms,
        true_positions,
        energy_ev=config.energy_ev,
        convergence_mrad=config.convergence_mrad,
        detector_pixels=config.detector_pixels,
        detector_pixel_mrad=config.detector_pixel_mrad,
        aberrations=true_probe,
        binning=config.binning,
        oversample=config.oversample,
        dose=dose_per_pattern,
        seed=seed + 1_000_003,
        device=device,
        progress=progress,
        coherence=config.coherence,
    )
    truth = None
    probe = result.probe
    if config.has_acquisition_errors:
        truth = AcquisitionTruth(true_positions, result.probe, true_probe.model_dump())
        probe = config.nominal_aberrations.reconstruction_probe(
            config.energy_ev, config.convergence_mrad, config.detector_pixels, config.detector_pixel_mrad
        ).numpy()
    return Dataset4D(
        patterns=result.patterns if dose_per_pattern is not None else result.patterns.astype(np.float32),
        positions_nm=positions,
        energy_ev=config.energy_ev,
        convergence_mrad=config.convergence_mrad,
        detector_pixel_mrad=config.detector_pixel_mrad,
        defocus_nm=config.defocus_nm,
        grid_shape=tuple(config.scan_shape),
        probe=probe,
        ground_truth=GroundTruth(result.phase, result.phase_pixel_nm, result.phase_origin_nm),
        specimen_kind=config.specimen.kind,
        specimen_seed=int(seed),
        vacuum_fraction=vacuum_fraction(result.phase, result.phase_pixel_nm, result.phase_origin_nm, positions_nm=positions),
        acquisition_truth=truth,
    )


def write_simulated_datasets(
    config: SimulationConfig,
    n_datasets: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    split: str | None = None,
    progress: bool = True,
    device=None,
    on_dataset=None,
) -> list[Path]:
    """Write ``n_datasets`` raster datasets ``<kind>_<specimen seed>.h5`` to ``out_dir``.

    Specimen seeds are ``split_seeds(split, seed, n_datasets)``: seed, seed+1, ...
    without a split. ``on_dataset(path, dataset)`` is called after each file is written.
    """
    seeds = split_seeds(split, seed, n_datasets)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for specimen_seed in tqdm(seeds, desc=f"simulate {config.specimen.kind}", unit="dataset", disable=not progress):
        dataset = simulate_raster_dataset(config, specimen_seed, progress=progress, device=device)
        path = write_dataset(out / f"{config.specimen.kind}_{specimen_seed:04d}.h5", dataset)
        if on_dataset is not None:
            on_dataset(path, dataset)
        paths.append(path)
    return paths
