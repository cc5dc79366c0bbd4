"""Specimens with room to adapt (flake, particles, grain boundary), vacuum_mask/vacuum_fraction, seed splits, recorded attrs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptychoscan.cli import main
from ptychoscan.commands.simulate import SPECIMEN_CHOICES
from recon.dataset import DatasetError, read_dataset, write_dataset
from sim_microscope.datasets import SPLIT_SEED_RANGE, split_seeds
from sim_microscope.flakes import tmd_flake, tmd_grain_boundary
from sim_microscope.specimens import SPECIMEN_KINDS, SpecimenConfig, build_specimen
from sim_microscope.support import particles_on_carbon
from sim_microscope.vacuum import specimen_phase, vacuum_fraction, vacuum_mask

SIZE = (3.0, 3.0)
REGION = (1.5, 1.5)
REGION_BOX = (0.75, 2.25, 0.75, 2.25)  # the region centred in SIZE, (xmin, xmax, ymin, ymax) nm


def _same(a, b) -> bool:
    return a.get_chemical_symbols() == b.get_chemical_symbols() and np.array_equal(a.positions, b.positions)


@pytest.mark.parametrize("kind", ["flake", "particles", "grain-boundary"])
def test_new_kinds_are_seeded(kind):
    config = SpecimenConfig(kind=kind, size_nm=SIZE, region_nm=REGION)
    a, b, c = (build_specimen(config, seed=s) for s in (7, 7, 8))
    assert len(a) > 0 and _same(a, b) and not _same(a, c)
    xy = a.positions[:, :2]
    assert a.cell[0, 0] == pytest.approx(30.0) and a.cell[1, 1] == pytest.approx(30.0)
    assert xy.min() >= 0.0 and xy[:, 0].max() <= 30.0 and xy[:, 1].max() <= 30.0


def test_cli_choices_are_the_specimen_kinds():
    assert set(SPECIMEN_CHOICES) == set(SPECIMEN_KINDS)


@pytest.mark.parametrize(("seed", "target"), [(0, (0.4, 0.6)), (1, (0.25, 0.3)), (2, (0.7, 0.75))])
def test_flake_vacuum_fraction_in_requested_range(seed, target):
    atoms = tmd_flake("MoS2", SIZE, region_nm=REGION, vacuum_fraction=target, seed=seed)
    assert target[0] <= atoms.info["target_vacuum_fraction"] <= target[1]
    phase, origin = specimen_phase(atoms, 0.02)
    measured = vacuum_fraction(phase, 0.02, origin, box_nm=REGION_BOX)
    assert target[0] - 0.05 <= measured <= target[1] + 0.05


def test_flake_atoms_only_on_the_flake_side_and_holes_are_empty():
    atoms = tmd_flake("WS2", SIZE, region_nm=REGION, n_holes=(2, 2), hole_radius_nm=(0.3, 0.3), seed=3)
    assert set(atoms.get_chemical_symbols()) == {"W", "S"}
    normal, point, wiggle = atoms.info["edge_normal"], atoms.info["edge_point"], atoms.info["edge_max_wiggle"]
    side = (atoms.positions[:, :2] - point) @ normal
    assert side.min() >= -wiggle - 1e-9  # nothing beyond the edge
    assert side.max() > 10.0  # and the flake reaches well inside
    assert len(atoms.info["hole_radii"]) == 2
    for centre, radius in zip(atoms.info["hole_centres"], atoms.info["hole_radii"], strict=True):
        assert np.hypot(*(atoms.positions[:, :2] - centre).T).min() >= radius
        assert (centre - point) @ normal > radius  # holes lie inside the flake


def test_particles_have_metal_on_carbon_and_holes():
    atoms = particles_on_carbon(SIZE, region_nm=REGION, element="Pt", n_particles=(2, 2), n_holes=(1, 1), seed=4)
    symbols = np.array(atoms.get_chemical_symbols())
    assert set(symbols) == {"C", "Pt"}
    n_metal = int((symbols == "Pt").sum())
    radii = atoms.info["particle_radii"]
    assert len(radii) == 2 and all(3.0 <= r <= 8.0 for r in radii)
    # fcc: 4 atoms per a^3, within 50 % of a full ball's count (fragments are rough)
    full = sum(4 / 3 * np.pi * r**3 * 4 / 3.924**3 for r in radii)
    assert 0.5 * full <= n_metal <= 1.5 * full
    carbon = atoms.positions[symbols == "C"]
    assert carbon[:, 2].max() <= 10.0 and atoms.positions[symbols == "Pt", 2].min() > 10.0  # particles rest on the film
    assert len(carbon) / (30.0 * 30.0) == pytest.approx(1.0, rel=0.1)  # 1 nm of a-C at 2 g/cm^3: ~1 atom/A^2
    assert cKDTree(carbon).query_pairs(1.2 - 1e-6) == set()  # hard core
    (centre,), (radius,) = atoms.info["hole_centres"], atoms.info["hole_radii"]
    assert np.hypot(*(carbon[:, :2] - centre).T).min() >= radius


def test_grain_boundary_has_no_close_pairs_and_two_orientations():
    atoms = tmd_grain_boundary("MoS2", SIZE, region_nm=REGION, seed=5)
    assert cKDTree(atoms.positions).query_pairs(1.5) == set()
    theta_a, theta_b = atoms.info["rotations_deg"]
    assert 10.0 <= abs(theta_b - theta_a) <= 50.0
    side = (atoms.positions[:, :2] - atoms.info["boundary_point"]) @ atoms.info["boundary_normal"]
    assert (side < 0).sum() > 100 and (side >= 0).sum() > 100


def test_vacuum_mask_on_a_synthetic_phase():
    pixel = 0.01  # nm
    phase = np.zeros((60, 80), dtype=np.float32)
    phase[:, 40:] = 0.5  # specimen on the right half (x >= 0.4 nm)
    rng = np.random.default_rng(0)
    phase[:, 40:] += rng.uniform(0.0, 0.5, size=(60, 40))  # with structure
    mask = vacuum_mask(phase, pixel)
    assert mask.shape == phase.shape and mask.dtype == bool
    assert mask[:, :30].all() and not mask[:, 50:].any()  # True in vacuum, False on the specimen (away from the blurred edge)
    assert 0.4 <= vacuum_fraction(phase, pixel) < 0.5  # the blur (FWHM 0.1 nm) takes ~0.05 nm off the vacuum next to the specimen
    assert vacuum_fraction(phase, pixel, (1.0, 2.0), box_nm=(1.0, 1.2, 2.0, 2.5)) == 1.0
    assert vacuum_fraction(phase, pixel, (1.0, 2.0), positions_nm=np.array([[1.6, 2.1], [1.7, 2.4]])) == 0.0
    assert vacuum_mask(np.zeros((8, 8)), pixel).all()  # nothing there: all vacuum


def test_uniform_monolayer_has_no_vacuum():
    atoms = build_specimen(SpecimenConfig(kind="mos2", size_nm=(2.0, 2.0)), seed=0)
    phase, origin = specimen_phase(atoms, 0.02)
    assert vacuum_fraction(phase, 0.02, origin, box_nm=(0.5, 1.5, 0.5, 1.5)) == 0.0


def test_split_seeds_are_disjoint():
    seeds = {split: set(split_seeds(split, 0, SPLIT_SEED_RANGE)) for split in ("train", "val", "test")}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["val"] & seeds["test"]) and not (seeds["train"] & seeds["test"])
    assert split_seeds("val", 3, 2) == [100_003, 100_004]
    assert split_seeds(None, 3, 2) == [3, 4]
    with pytest.raises(ValueError, match="must lie in"):
        split_seeds("train", SPLIT_SEED_RANGE - 1, 2)


def test_specimen_attrs_round_trip_and_are_optional(tiny_dataset, tmp_path):
    assert tiny_dataset.specimen_kind == "mos2" and tiny_dataset.specimen_seed == 3 and tiny_dataset.vacuum_fraction == 0.0
    back = read_dataset(write_dataset(tmp_path / "a.h5", tiny_dataset))
    assert (back.specimen_kind, back.specimen_seed, back.vacuum_fraction) == ("mos2", 3, 0.0)
    with h5py.File(tmp_path / "a.h5", "r+") as f:  # a file from before these attributes
        for name in ("specimen_kind", "specimen_seed", "vacuum_fraction"):
            del f.attrs[name]
    old = read_dataset(tmp_path / "a.h5", load_patterns=False)
    assert (old.specimen_kind, old.specimen_seed, old.vacuum_fraction) == (None, None, None)
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        f.attrs["vacuum_fraction"] = 1.5
    with pytest.raises(DatasetError, match="vacuum_fraction"):
        read_dataset(tmp_path / "a.h5")


def test_simulate_cli_flake_records_kind_seed_and_vacuum(tmp_path, capsys):
    args = ["simulate", "--specimen", "flake", "--split", "val", "--seed", "2", "--out", str(tmp_path)]
    args += ["--scan-shape", "4", "4", "--step-nm", "0.3", "--detector-pixels", "16", "--detector-pixel-mrad", "6.0"]
    args += ["--binning", "1", "--oversample", "2", "--device", "cpu", "--specimen-set", "flake_vacuum_fraction=[0.3, 0.5]"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("split=val seeds=100002..100002")
    (path,) = tmp_path.glob("*.h5")
    assert path.name == "flake_100002.h5"
    with h5py.File(path, "r") as f:
        assert f.attrs["specimen_kind"] == "flake" and int(f.attrs["specimen_seed"]) == 100_002
        fraction = float(f.attrs["vacuum_fraction"])
    assert 0.2 <= fraction <= 0.6
    assert f"kind=flake seed=100002 vacuum_fraction={fraction:.3f} positions_per_nm2={16 / 0.9**2:.1f}" in out[1]
