"""Monolayer specimens with room to adapt: a flake with a rough edge and holes, and a grain boundary.

Builders return ``ase.Atoms`` like ``sim_microscope.specimens``: Angstrom, beam along z,
field x in [0, Lx], y in [0, Ly] (the cell), seeded. ``region_nm`` is the (width,
height) of a region centred in the field (the raster a dataset scans) that the
features (edge, holes, boundary) are placed in and that a flake's vacuum fraction
refers to; None is the whole field.
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

from sim_microscope.specimens import tmd_monolayer

VACUUM_DISTANCE_ANGSTROM = 1.65
"""A point farther than this from every atom is vacuum for the builders' vacuum estimate.

Calibrated against ``sim_microscope.vacuum.vacuum_fraction`` of the Kirkland phase of
MoS2 flakes (60 kV, 0.1 nm blur): the two agree to about 0.02.
"""
_SAMPLE_STEP_ANGSTROM = 0.5
_MAX_SAMPLES_PER_SIDE = 200
_MIN_REGION_ANGSTROM = 2.0


def child_seed(rng: np.random.Generator) -> int:
    """A seed for a sub-builder, drawn from ``rng`` (so one seed fixes the whole specimen)."""
    return int(rng.integers(2**63 - 1))


def region_box(size_nm: tuple[float, float], region_nm: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """(centre, half-extent) in Angstrom of the region centred in the field; at least 2 A wide."""
    lx, ly = size_nm[0] * 10.0, size_nm[1] * 10.0
    rw, rh = (lx, ly) if region_nm is None else (region_nm[0] * 10.0, region_nm[1] * 10.0)
    rw, rh = min(max(rw, _MIN_REGION_ANGSTROM), lx), min(max(rh, _MIN_REGION_ANGSTROM), ly)
    return np.array([lx / 2, ly / 2]), np.array([rw / 2, rh / 2])


def region_samples(centre: np.ndarray, half: np.ndarray) -> np.ndarray:
    """(M, 2) grid of points (Angstrom) covering the region, for area fractions."""
    n = np.clip(np.ceil(2 * half / _SAMPLE_STEP_ANGSTROM).astype(int) + 1, 2, _MAX_SAMPLES_PER_SIDE)
    xs = np.linspace(centre[0] - half[0], centre[0] + half[0], n[0])
    ys = np.linspace(centre[1] - half[1], centre[1] + half[1], n[1])
    gx, gy = np.meshgrid(xs, ys)
    return np.column_stack([gx.ravel(), gy.ravel()])


def estimated_vacuum_fraction(xy: np.ndarray, samples: np.ndarray, distance: float = VACUUM_DISTANCE_ANGSTROM) -> float:
    """Fraction of sample points farther than ``distance`` (A) from every atom at ``xy`` (A)."""
    if len(xy) == 0:
        return 1.0
    d, _ = cKDTree(xy).query(samples, distance_upper_bound=distance)
    return float(np.isinf(d).mean())


def _draw(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(lo) if hi == lo else float(rng.uniform(lo, hi))


def _draw_count(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


class RoughEdge:
    """A straight line with a smooth seeded wiggle: s(p) = n.(p - c) + sum_k a_k sin(2 pi t / w_k + phi_k).

    ``t`` is the coordinate along the line; 6 modes with wavelengths 4 nm down to 0.4 nm,
    amplitudes drawn with weights proportional to the wavelength and scaled to an RMS of
    ``roughness`` (A). Points with s >= offset are on the flake side.
    """

    def __init__(self, rng: np.random.Generator, centre: np.ndarray, roughness: float) -> None:
        angle = rng.uniform(0.0, 2 * math.pi)
        self.normal = np.array([math.cos(angle), math.sin(angle)])
        self.tangent = np.array([-math.sin(angle), math.cos(angle)])
        self.centre = np.asarray(centre, dtype=np.float64)
        self.wavelengths = np.geomspace(40.0, 4.0, 6)
        amplitudes = rng.normal(size=6) * self.wavelengths
        self.phases = rng.uniform(0.0, 2 * math.pi, size=6)
        rms = math.sqrt(0.5 * float(np.sum(amplitudes**2)))
        self.amplitudes = amplitudes * (roughness / rms if rms > 0 else 0.0)

    @property
    def max_wiggle(self) -> float:
        """Largest possible |wiggle| in A: points with n.(p - c) < offset - max_wiggle are vacuum."""
        return float(np.abs(self.amplitudes).sum())

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        rel = np.asarray(xy)[..., :2] - self.centre
        t = rel @ self.tangent
        wiggle = (self.amplitudes * np.sin(2 * math.pi * t[..., None] / self.wavelengths + self.phases)).sum(axis=-1)
        return rel @ self.normal + wiggle


def _solve_offset(edge: RoughEdge, xy: np.ndarray, keep: np.ndarray, samples: np.ndarray, target: float, reach: float) -> float:
    """Offset of the edge at which the estimated vacuum fraction of ``samples`` is ``target`` (bisection)."""
    s = edge(xy)
    lo, hi = -reach, reach  # fraction grows with the offset: more of the field is cut away
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if estimated_vacuum_fraction(xy[keep & (s >= mid)], samples) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def tmd_flake(
    formula: str = "MoS2",
    size_nm: tuple[float, float] = (5.0, 5.0),
    *,
    region_nm: tuple[float, float] | None = None,
    vacuum_fraction: tuple[float, float] = (0.4, 0.6),
    edge_roughness_nm: float = 0.15,
    n_holes: tuple[int, int] = (1, 3),
    hole_radius_nm: tuple[float, float] = (0.1, 0.4),
    rotation_deg: float | None = None,
    chalcogen_vacancy_fraction: float = 0.0,
    metal_vacancy_fraction: float = 0.0,
    seed: int | None = None,
) -> Atoms:
    """A monolayer flake: a rough edge crossing the region, vacuum beyond it, and a few holes inside.

    The edge (``RoughEdge``) has a random direction and an RMS roughness of
    ``edge_roughness_nm``; its offset is solved so that the region's vacuum fraction
    (estimated as the area farther than VACUUM_DISTANCE_ANGSTROM from every atom) equals
    a target drawn uniformly from ``vacuum_fraction``, holes included. Holes: a count
    drawn from ``n_holes`` (inclusive), each removing every atom within a radius drawn
    from ``hole_radius_nm`` (nm) of a centre inside the region on the flake side; a
    0.1 nm hole is a multi-vacancy, one of 0.3 nm and more opens vacuum.

    ``atoms.info`` holds ``edge_normal``, ``edge_point`` (A; the straight line
    n.(p - edge_point) = 0 the edge wiggles about, flake on the +n side),
    ``edge_max_wiggle`` (A), ``target_vacuum_fraction`` and ``hole_centres`` /
    ``hole_radii`` (A).
    """
    rng = np.random.default_rng(seed)
    target = _draw(rng, vacuum_fraction)
    sheet = tmd_monolayer(
        formula,
        size_nm,
        rotation_deg=rotation_deg,
        chalcogen_vacancy_fraction=chalcogen_vacancy_fraction,
        metal_vacancy_fraction=metal_vacancy_fraction,
        seed=child_seed(rng),
    )
    centre, half = region_box(size_nm, region_nm)
    samples = region_samples(centre, half)
    edge = RoughEdge(rng, centre, edge_roughness_nm * 10.0)
    xy = sheet.positions[:, :2]
    reach = float(np.hypot(*half)) + edge.max_wiggle + 2 * VACUUM_DISTANCE_ANGSTROM
    keep = np.ones(len(sheet), dtype=bool)
    offset = _solve_offset(edge, xy, keep, samples, target, reach)

    centres, radii = [], []
    for _ in range(_draw_count(rng, n_holes)):
        radius = _draw(rng, hole_radius_nm) * 10.0
        for _attempt in range(50):
            point = centre + rng.uniform(-1.0, 1.0, size=2) * half
            if edge(point) > offset + radius + VACUUM_DISTANCE_ANGSTROM:
                centres.append(point)
                radii.append(radius)
                keep &= np.hypot(*(xy - point).T) >= radius
                break
    if centres:  # the holes add vacuum: move the edge out to stay on target
        offset = _solve_offset(edge, xy, keep, samples, target, reach)
    keep &= edge(xy) >= offset
    atoms = sheet[keep]
    atoms.info.update(
        edge_normal=edge.normal,
        edge_point=edge.centre + offset * edge.normal,
        edge_max_wiggle=edge.max_wiggle,
        target_vacuum_fraction=target,
        hole_centres=np.array(centres).reshape(-1, 2),
        hole_radii=np.array(radii),
    )
    return atoms


def tmd_grain_boundary(
    formula: str = "MoS2",
    size_nm: tuple[float, float] = (5.0, 5.0),
    *,
    region_nm: tuple[float, float] | None = None,
    misorientation_deg: tuple[float, float] = (10.0, 50.0),
    min_distance_angstrom: float = 1.5,
    chalcogen_vacancy_fraction: float = 0.0,
    metal_vacancy_fraction: float = 0.0,
    seed: int | None = None,
) -> Atoms:
    """Two monolayer grains rotated against each other, meeting along a straight seeded line.

    Grain A has a random rotation in [0, 60) degrees, grain B that plus or minus a
    misorientation drawn from ``misorientation_deg``; each has its own random
    translation and vacancies. The boundary passes through a point in the central half
    of the region at a random angle; A fills one side, B the other, and every atom of B
    closer than ``min_distance_angstrom`` to an atom of A in projection (xy) is removed,
    so no two atoms are closer than that in 3D either.

    ``atoms.info`` holds ``boundary_normal``, ``boundary_point`` (A), ``rotations_deg``.
    """
    rng = np.random.default_rng(seed)
    theta_a = rng.uniform(0.0, 60.0)
    theta_b = theta_a + rng.choice([-1.0, 1.0]) * _draw(rng, misorientation_deg)
    options = dict(chalcogen_vacancy_fraction=chalcogen_vacancy_fraction, metal_vacancy_fraction=metal_vacancy_fraction)
    grain_a = tmd_monolayer(formula, size_nm, rotation_deg=theta_a, seed=child_seed(rng), **options)
    grain_b = tmd_monolayer(formula, size_nm, rotation_deg=theta_b, seed=child_seed(rng), **options)
    centre, half = region_box(size_nm, region_nm)
    point = centre + rng.uniform(-0.5, 0.5, size=2) * half
    angle = rng.uniform(0.0, 2 * math.pi)
    normal = np.array([math.cos(angle), math.sin(angle)])
    a = grain_a[(grain_a.positions[:, :2] - point) @ normal < 0]
    b = grain_b[(grain_b.positions[:, :2] - point) @ normal >= 0]
    if len(a) and len(b):
        d, _ = cKDTree(a.positions[:, :2]).query(b.positions[:, :2], distance_upper_bound=min_distance_angstrom)
        b = b[np.isinf(d)]
    atoms = a + b
    atoms.info.update(boundary_normal=normal, boundary_point=point, rotations_deg=(theta_a, theta_b))
    return atoms
