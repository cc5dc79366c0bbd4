"""Metal nanoparticles on a thin amorphous-carbon support film, with holes in the film.

Builders return ``ase.Atoms`` like ``sim_microscope.specimens`` (Angstrom, beam along
z, field x in [0, Lx], y in [0, Ly], seeded); ``region_nm`` as in
``sim_microscope.flakes``: the centred region (a dataset's raster) particles and holes
are placed in.

The support is a slab of random carbon atoms at amorphous-carbon density (default
2.0 g/cm^3, 0.100 atoms/A^3) and 1 nm thickness, i.e. 1.0 atoms/A^2 in projection,
placed by random sequential addition with a 1.2 A hard core (a-C bonds are 1.4-1.55 A)
so that no two atoms overlap. The simulation is single-slice, so only the projected
density matters: a few-nm film would scale the support's phase (about 0.14 rad per nm
at 60 kV) and its atom count; 1 nm keeps a 5.5 x 5.5 nm field near 3000 atoms.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from sim_microscope.flakes import _draw, _draw_count, child_seed, region_box

AVOGADRO = 6.02214076e23
CARBON_MASS_G_MOL = 12.011
FCC_LATTICE_ANGSTROM: dict[str, float] = {"Au": 4.078, "Pt": 3.924, "Ag": 4.086, "Pd": 3.891}
"""Cubic lattice constants (A) of the fcc metals a particle can be made of."""
CARBON_HARD_CORE_ANGSTROM = 1.2
PARTICLE_GAP_ANGSTROM = 2.0
"""Gap between the support's top surface and a particle's lowest atom, and between particles."""


def carbon_atoms_per_a3(density_g_cm3: float) -> float:
    """Number density (atoms/A^3) of carbon at a mass density in g/cm^3."""
    return density_g_cm3 / CARBON_MASS_G_MOL * AVOGADRO * 1e-24


def amorphous_carbon(
    size_nm: tuple[float, float] = (5.0, 5.0),
    *,
    thickness_nm: float = 1.0,
    density_g_cm3: float = 2.0,
    hard_core_angstrom: float = CARBON_HARD_CORE_ANGSTROM,
    seed: int | None = None,
) -> Atoms:
    """Random carbon atoms filling a slab (x, y in the field, z in [0, thickness]) at a mass density.

    Random sequential addition: candidates are drawn uniformly in batches and each is
    kept unless it lies within ``hard_core_angstrom`` of an atom kept before it.
    """
    rng = np.random.default_rng(seed)
    extent = np.array([size_nm[0], size_nm[1], thickness_nm]) * 10.0
    n_atoms = round(carbon_atoms_per_a3(density_g_cm3) * float(np.prod(extent)))
    kept = np.empty((0, 3))
    while len(kept) < n_atoms:
        candidates = rng.uniform(0.0, 1.0, size=(int(1.5 * (n_atoms - len(kept))) + 16, 3)) * extent
        if len(kept):
            d, _ = cKDTree(kept).query(candidates, distance_upper_bound=hard_core_angstrom)
            candidates = candidates[np.isinf(d)]
        pairs = cKDTree(candidates).query_pairs(hard_core_angstrom, output_type="ndarray")
        clash = np.zeros(len(candidates), dtype=bool)
        clash[pairs.max(axis=1) if len(pairs) else []] = True  # the later of each close pair goes
        kept = np.concatenate([kept, candidates[~clash]])[:n_atoms]
    return Atoms(symbols=["C"] * n_atoms, positions=kept, cell=[extent[0], extent[1], extent[2] + 10.0], pbc=False)


def fcc_particle(element: str = "Au", radius_nm: float = 0.5, *, seed: int | None = None) -> Atoms:
    """A roughly spherical fcc fragment: lattice sites within ``radius_nm`` of a random point, randomly oriented.

    Centred on its centre of mass at the origin; always at least one atom.
    """
    if element not in FCC_LATTICE_ANGSTROM:
        raise ValueError(f"unknown fcc metal {element!r}; choose one of {sorted(FCC_LATTICE_ANGSTROM)}")
    rng = np.random.default_rng(seed)
    a = FCC_LATTICE_ANGSTROM[element]
    radius = radius_nm * 10.0
    n = int(np.ceil(radius / a)) + 1
    cells = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    sites = ((cells + basis) * a).reshape(-1, 3) - rng.uniform(0.0, 1.0, size=3) * a
    distance = np.linalg.norm(sites, axis=1)
    inside = distance <= radius
    inside[np.argmin(distance)] = True
    xyz = Rotation.random(random_state=rng).apply(sites[inside])
    xyz -= xyz.mean(axis=0)
    return Atoms(symbols=[element] * len(xyz), positions=xyz)


def particles_on_carbon(
    size_nm: tuple[float, float] = (5.0, 5.0),
    *,
    region_nm: tuple[float, float] | None = None,
    element: str = "Au",
    n_particles: tuple[int, int] = (2, 4),
    particle_radius_nm: tuple[float, float] = (0.3, 0.8),
    support_thickness_nm: float = 1.0,
    support_density_g_cm3: float = 2.0,
    n_holes: tuple[int, int] = (1, 2),
    hole_radius_nm: tuple[float, float] = (0.3, 0.6),
    seed: int | None = None,
) -> Atoms:
    """fcc metal nanoparticles resting on an amorphous-carbon film that may have holes.

    Particles: a count drawn from ``n_particles`` (inclusive), radii from
    ``particle_radius_nm`` (nm), centred in the region (and inside the field),
    PARTICLE_GAP_ANGSTROM apart and resting that far above the film; one that finds no
    room in 100 tries is left out (the first always fits). Holes: a count drawn from
    ``n_holes``, each removing the film's atoms within a radius drawn from
    ``hole_radius_nm`` (nm) of a centre in the region that is not under a particle
    (left out when there is no such centre in 100 tries).

    ``atoms.info`` holds ``particle_centres`` (A, xy), ``particle_radii``,
    ``hole_centres`` and ``hole_radii`` (A).
    """
    rng = np.random.default_rng(seed)
    film = amorphous_carbon(size_nm, thickness_nm=support_thickness_nm, density_g_cm3=support_density_g_cm3, seed=child_seed(rng))
    centre, half = region_box(size_nm, region_nm)
    field = np.array(size_nm) * 10.0
    top = support_thickness_nm * 10.0
    particles, centres, radii = [], [], []
    for _ in range(_draw_count(rng, n_particles)):
        radius = _draw(rng, particle_radius_nm) * 10.0
        particle = fcc_particle(element, radius / 10.0, seed=child_seed(rng))
        for _attempt in range(100):
            point = np.clip(centre + rng.uniform(-1.0, 1.0, size=2) * half, radius, np.maximum(field - radius, radius))
            if all(np.hypot(*(point - c)) >= r + radius + PARTICLE_GAP_ANGSTROM for c, r in zip(centres, radii, strict=True)):
                particle.positions += [point[0], point[1], top + PARTICLE_GAP_ANGSTROM - particle.positions[:, 2].min()]
                particles.append(particle)
                centres.append(point)
                radii.append(radius)
                break
    xy = film.positions[:, :2]
    keep = np.ones(len(film), dtype=bool)
    hole_centres, hole_radii = [], []
    for _ in range(_draw_count(rng, n_holes)):
        radius = _draw(rng, hole_radius_nm) * 10.0
        for _attempt in range(100):
            point = centre + rng.uniform(-1.0, 1.0, size=2) * half
            if all(np.hypot(*(point - c)) >= r + radius for c, r in zip(centres, radii, strict=True)):
                keep &= np.hypot(*(xy - point).T) >= radius
                hole_centres.append(point)
                hole_radii.append(radius)
                break
    atoms = film[keep]
    for particle in particles:
        atoms += particle
    atoms.info.update(
        particle_centres=np.array(centres).reshape(-1, 2),
        particle_radii=np.array(radii),
        hole_centres=np.array(hole_centres).reshape(-1, 2),
        hole_radii=np.array(hole_radii),
    )
    return atoms
