"""Specimens: monolayer transition-metal dichalcogenides and double-walled carbon nanotubes.

Kinds with room to adapt (vacuum, edges, particles, boundaries): ``flake`` and
``grain-boundary`` (``sim_microscope.flakes``) and ``particles``
(``sim_microscope.support``).

Every builder returns an ``ase.Atoms`` with the beam along z, positions in Angstrom
(ase's unit), the in-plane field spanning x in [0, Lx] and y in [0, Ly] (the atoms'
cell holds Lx, Ly), and takes a seed for its random rotation, translation and defects.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from ase import Atoms
from ase.build import mx2, nanotube
from pydantic import BaseModel, Field, field_validator

# Lattice constant a and chalcogen-chalcogen height (thickness) in Angstrom, 2H phase.
TMD_LATTICE: dict[str, tuple[float, float]] = {
    "MoS2": (3.18, 3.19),
    "MoSe2": (3.32, 3.34),
    "WS2": (3.18, 3.14),
    "WSe2": (3.28, 3.35),
}
SPECIMEN_NAMES = {
    "mos2": "MoS2",
    "mose2": "MoSe2",
    "ws2": "WS2",
    "wse2": "WSe2",
    "dwcnt": "DWCNT",
    "flake": "TMD flake",
    "particles": "nanoparticles on a-C",
    "grain-boundary": "TMD grain boundary",
}
SpecimenKind = Literal["mos2", "mose2", "ws2", "wse2", "dwcnt", "flake", "particles", "grain-boundary"]
SPECIMEN_KINDS: tuple[str, ...] = SpecimenKind.__args__


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"range {pair} must be (low, high) with low <= high")
    return pair


class SpecimenConfig(BaseModel):
    """What specimen to build. Lengths in nm, fractions of sites or areas in [0, 1]; (low, high) ranges are drawn per seed."""

    kind: SpecimenKind = "mos2"
    size_nm: tuple[float, float] = Field((5.0, 5.0), description="field (Lx, Ly) the atoms cover, nm")
    region_nm: tuple[float, float] | None = Field(
        None,
        description="(width, height) in nm of the region centred in the field (a dataset's raster) that the flake, "
        "particles and grain-boundary kinds place their features in; None: the whole field. Datasets set it.",
    )
    random_rotation: bool = True
    chalcogen_vacancy_fraction: float = Field(0.04, ge=0.0, le=1.0)
    metal_vacancy_fraction: float = Field(0.01, ge=0.0, le=1.0)
    inner_chirality: tuple[int, int] = (10, 4)
    """(n, m) of the inner nanotube wall: 9.78 A diameter (the paper's)."""
    outer_chirality: tuple[int, int] = (15, 9)
    """(n, m) of the outer nanotube wall: 16.44 A diameter (the paper's)."""
    tmd_formula: Literal["MoS2", "MoSe2", "WS2", "WSe2"] = Field("MoS2", description="monolayer of the flake and grain-boundary kinds")
    flake_vacuum_fraction: tuple[float, float] = Field(
        (0.4, 0.6), description="flake: (low, high) of the region's target vacuum fraction, area fraction in [0, 0.95]"
    )
    flake_edge_roughness_nm: float = Field(0.15, ge=0.0, description="flake: RMS deviation of the edge from a straight line, nm")
    flake_holes: tuple[int, int] = Field((1, 3), description="flake: (low, high) number of holes inside the flake, inclusive")
    flake_hole_radius_nm: tuple[float, float] = Field((0.1, 0.4), description="flake: (low, high) hole radius, nm")
    particle_element: Literal["Au", "Pt", "Ag", "Pd"] = Field("Au", description="particles: fcc metal of the nanoparticles")
    particle_count: tuple[int, int] = Field((2, 4), description="particles: (low, high) number of nanoparticles, inclusive")
    particle_radius_nm: tuple[float, float] = Field((0.3, 0.8), description="particles: (low, high) nanoparticle radius, nm")
    support_thickness_nm: float = Field(1.0, gt=0.0, le=5.0, description="particles: amorphous-carbon film thickness, nm")
    support_density_g_cm3: float = Field(2.0, gt=0.0, le=3.5, description="particles: amorphous-carbon mass density, g/cm^3")
    support_holes: tuple[int, int] = Field((1, 2), description="particles: (low, high) number of holes in the film, inclusive")
    support_hole_radius_nm: tuple[float, float] = Field((0.3, 0.6), description="particles: (low, high) film hole radius, nm")
    grain_misorientation_deg: tuple[float, float] = Field(
        (10.0, 50.0), description="grain-boundary: (low, high) rotation between the grains, degrees"
    )
    grain_min_distance_angstrom: float = Field(
        1.5, gt=0.0, description="grain-boundary: atoms of the second grain closer than this to the first (projected) are removed, A"
    )

    @field_validator(
        "flake_vacuum_fraction",
        "flake_holes",
        "flake_hole_radius_nm",
        "particle_count",
        "particle_radius_nm",
        "support_holes",
        "support_hole_radius_nm",
        "grain_misorientation_deg",
    )
    @classmethod
    def _check_range(cls, value, info):
        _ordered(value)
        if min(value) < 0:
            raise ValueError(f"{info.field_name} must not be negative, got {value}")
        if info.field_name == "flake_vacuum_fraction" and value[1] > 0.95:
            raise ValueError(f"flake_vacuum_fraction must be at most 0.95, got {value}")
        if info.field_name == "particle_count" and value[0] < 1:
            raise ValueError(f"particle_count must be at least 1, got {value}")
        return value


def tmd_monolayer(
    formula: str = "MoS2",
    size_nm: tuple[float, float] = (5.0, 5.0),
    *,
    rotation_deg: float | None = None,
    chalcogen_vacancy_fraction: float = 0.0,
    metal_vacancy_fraction: float = 0.0,
    seed: int | None = None,
) -> Atoms:
    """A 2H monolayer (MoS2, MoSe2, WS2 or WSe2) tiled over a rectangular field.

    Args:
        formula: one of TMD_LATTICE.
        size_nm: (Lx, Ly) of the field in nm.
        rotation_deg: in-plane rotation; None draws one uniformly in [0, 60) degrees.
        chalcogen_vacancy_fraction: fraction of chalcogen atoms removed at random.
        metal_vacancy_fraction: fraction of metal atoms removed at random.
        seed: seed for rotation, translation and vacancies.
    """
    if formula not in TMD_LATTICE:
        raise ValueError(f"unknown monolayer {formula!r}; choose one of {sorted(TMD_LATTICE)}")
    rng = np.random.default_rng(seed)
    a, thickness = TMD_LATTICE[formula]
    cell = mx2(formula, a=a, thickness=thickness)
    basis = cell.positions
    metal = cell.get_chemical_symbols()[0]
    lx, ly = size_nm[0] * 10.0, size_nm[1] * 10.0
    if rotation_deg is None:
        rotation_deg = rng.uniform(0.0, 60.0)
    # Lattice points covering a disc that contains the field for any rotation.
    radius = 0.5 * math.hypot(lx, ly) + 2 * a
    n = math.ceil(radius / (a * math.sqrt(3) / 2)) + 1
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    a1, a2 = cell.cell[0, :2], cell.cell[1, :2]
    lattice = i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2
    points = (lattice[:, None, :] + basis[None, :, :2]).reshape(-1, 2)
    heights = np.tile(basis[:, 2], len(lattice))
    symbols = np.tile(cell.get_chemical_symbols(), len(lattice))
    theta = math.radians(rotation_deg)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    shift = rng.uniform(0.0, 1.0, size=2) @ np.stack([a1, a2])  # random translation within a unit cell
    xy = (points + shift) @ rot.T + np.array([lx / 2, ly / 2])
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < lx) & (xy[:, 1] >= 0) & (xy[:, 1] < ly)
    xy, heights, symbols = xy[inside], heights[inside], symbols[inside]
    keep = np.ones(len(symbols), dtype=bool)
    for is_metal, fraction in ((True, metal_vacancy_fraction), (False, chalcogen_vacancy_fraction)):
        sites = np.flatnonzero((symbols == metal) == is_metal)
        n_remove = round(fraction * len(sites))
        keep[rng.choice(sites, size=n_remove, replace=False)] = False
    positions = np.column_stack([xy[keep], heights[keep]])
    return Atoms(symbols=symbols[keep].tolist(), positions=positions, cell=[lx, ly, thickness + 10.0], pbc=False)


def nanotube_diameter_angstrom(n: int, m: int, bond_angstrom: float = 1.42) -> float:
    """Diameter of an (n, m) carbon nanotube in Angstrom."""
    a = bond_angstrom * math.sqrt(3)
    return a / math.pi * math.sqrt(n * n + n * m + m * m)


def double_walled_nanotube(
    inner: tuple[int, int] = (10, 4),
    outer: tuple[int, int] = (15, 9),
    size_nm: tuple[float, float] = (5.0, 5.0),
    *,
    rotation_deg: float | None = None,
    offset_nm: float | None = None,
    seed: int | None = None,
) -> Atoms:
    """A double-walled carbon nanotube lying in the xy plane across a rectangular field.

    The default chiralities give the paper's 9.78 A inner and 16.44 A outer diameters.
    The tube axis gets a random in-plane direction and passes at a random perpendicular
    offset (within a quarter of the field) from the field centre.
    """
    rng = np.random.default_rng(seed)
    lx, ly = size_nm[0] * 10.0, size_nm[1] * 10.0
    half_length = 0.5 * math.hypot(lx, ly) + 5.0
    walls = []
    for n, m in (inner, outer):
        tube = nanotube(n, m, length=1, bond=1.42)
        period = tube.cell.lengths()[2]
        tube = nanotube(n, m, length=math.ceil(2 * half_length / period), bond=1.42)
        walls.append(tube.positions)
    xyz = np.concatenate(walls)
    xyz[:, :2] -= xyz[:, :2].mean(axis=0)
    xyz[:, 2] -= 0.5 * (xyz[:, 2].min() + xyz[:, 2].max())
    # Lay the tube axis (z) along x: (x, y, z) -> (z, y, -x).
    xyz = np.column_stack([xyz[:, 2], xyz[:, 1], -xyz[:, 0]])
    if rotation_deg is None:
        rotation_deg = rng.uniform(0.0, 180.0)
    if offset_nm is None:
        offset_nm = rng.uniform(-0.25, 0.25) * min(size_nm)
    theta = math.radians(rotation_deg)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    xy = xyz[:, :2] @ rot.T
    normal = np.array([-math.sin(theta), math.cos(theta)])
    xy += normal * offset_nm * 10.0 + np.array([lx / 2, ly / 2])
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < lx) & (xy[:, 1] >= 0) & (xy[:, 1] < ly)
    positions = np.column_stack([xy[inside], xyz[inside, 2]])
    return Atoms(symbols=["C"] * int(inside.sum()), positions=positions, cell=[lx, ly, 30.0], pbc=False)


def build_specimen(config: SpecimenConfig, seed: int | None = None) -> Atoms:
    """Build the specimen a SpecimenConfig describes."""
    if config.kind == "flake":
        from sim_microscope.flakes import tmd_flake

        return tmd_flake(
            config.tmd_formula,
            config.size_nm,
            region_nm=config.region_nm,
            vacuum_fraction=config.flake_vacuum_fraction,
            edge_roughness_nm=config.flake_edge_roughness_nm,
            n_holes=config.flake_holes,
            hole_radius_nm=config.flake_hole_radius_nm,
            rotation_deg=None if config.random_rotation else 0.0,
            chalcogen_vacancy_fraction=config.chalcogen_vacancy_fraction,
            metal_vacancy_fraction=config.metal_vacancy_fraction,
            seed=seed,
        )
    if config.kind == "grain-boundary":
        from sim_microscope.flakes import tmd_grain_boundary

        return tmd_grain_boundary(
            config.tmd_formula,
            config.size_nm,
            region_nm=config.region_nm,
            misorientation_deg=config.grain_misorientation_deg,
            min_distance_angstrom=config.grain_min_distance_angstrom,
            chalcogen_vacancy_fraction=config.chalcogen_vacancy_fraction,
            metal_vacancy_fraction=config.metal_vacancy_fraction,
            seed=seed,
        )
    if config.kind == "particles":
        from sim_microscope.support import particles_on_carbon

        return particles_on_carbon(
            config.size_nm,
            region_nm=config.region_nm,
            element=config.particle_element,
            n_particles=config.particle_count,
            particle_radius_nm=config.particle_radius_nm,
            support_thickness_nm=config.support_thickness_nm,
            support_density_g_cm3=config.support_density_g_cm3,
            n_holes=config.support_holes,
            hole_radius_nm=config.support_hole_radius_nm,
            seed=seed,
        )
    if config.kind == "dwcnt":
        return double_walled_nanotube(
            config.inner_chirality,
            config.outer_chirality,
            config.size_nm,
            rotation_deg=None if config.random_rotation else 0.0,
            seed=seed,
        )
    return tmd_monolayer(
        SPECIMEN_NAMES[config.kind],
        config.size_nm,
        rotation_deg=None if config.random_rotation else 0.0,
        chalcogen_vacancy_fraction=config.chalcogen_vacancy_fraction,
        metal_vacancy_fraction=config.metal_vacancy_fraction,
        seed=seed,
    )
