"""The structure-guided planner: a non-learned rule that puts probes where the reconstruction shows structure.

Ptychography needs overlapping probes everywhere it is to reconstruct, but a flake edge,
a hole or the vacuum around a nanotube holds nothing to resolve: there a sparser
sampling loses little, and the positions saved make the specimen denser. The planner
turns the current reconstruction into a target sampling density and places the next
sub-sequence by density-weighted farthest-point sampling:

1. **Structure** ``s`` in [0, 1]: the local standard deviation of the reconstructed
   phase over ``contrast_scale_nm`` (atoms give strong local contrast, vacuum only
   noise), measured only where a probe has been (within ``probe_radius_nm`` of a
   measured position), spread to the surroundings over ``spread_nm`` by normalised
   convolution (unmeasured places far from every probe get the prior 0.5), divided by
   its ``reference_percentile`` over the field and clipped to 1. Where the measured
   contrast splits into two classes ``contrast_split_ratio`` apart (vacuum noise and
   specimen), it is rescaled between them instead, so that vacuum counts 0; where the
   smoothed phase splits into two levels (``level_separation``), structure is also
   multiplied by the pixel's place between them.
2. **Density** ``rho = floor + (1 - floor) * s``: featureless regions keep ``floor`` of
   the specimen's density, so the overlap that ptychography needs survives there too;
   where structure covers little of the field the floor rises so that it draws at most
   ``max_enrichment`` times its share of the positions.
3. **Placement**: each next position is the candidate (a ``candidate_step_nm`` raster
   over the field) that maximises ``d * sqrt(rho)``, d its distance to the nearest
   measured or already chosen position. In 2-D the spacing of such a sampling scales
   as 1 / sqrt(rho); on a uniform specimen it is plain farthest-point sampling, which
   spreads positions like a low-discrepancy pattern. Any candidate farther than
   ``max_gap_nm`` from every position comes first, so no hole in the coverage grows
   beyond it.

Fed the ground truth instead of the reconstruction, the same rule gives the
"oracle" bound the evaluation compares against.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from scipy.spatial import cKDTree

from policy.baselines import candidate_raster, check_fov, sparse_grid_coarse_to_fine


class StructureGuidedOptions(BaseModel):
    """Options of the structure-guided planner; lengths in nm."""

    model_config = ConfigDict(extra="forbid")

    floor: float = Field(0.1, ge=0.0, le=1.0, description="relative sampling density where the reconstruction shows no structure")
    contrast_scale_nm: float = Field(0.08, gt=0, description="Gaussian sigma of the local phase standard deviation, nm")
    probe_radius_nm: float = Field(0.1, gt=0, description="a pixel counts as measured within this distance of a probe position, nm")
    spread_nm: float = Field(0.15, gt=0, description="Gaussian sigma over which measured structure is spread to its surroundings, nm")
    reference_percentile: float = Field(90.0, gt=0, le=100, description="structure is divided by this percentile over the field")
    candidate_step_nm: float = Field(0.02, gt=0, description="raster of candidate positions, nm (the paper's 0.02 nm)")
    max_gap_nm: float = Field(0.3, gt=0, description="no candidate may stay farther than this from every position, nm")
    featureless_below: float = Field(0.25, ge=0, le=1, description="structure below this counts as featureless (vacuum)")
    uniform_below: float = Field(
        0.05, ge=0, le=1, description="a field with less than this share featureless continues the sparse grid (nothing to adapt to)"
    )
    level_separation: float | None = Field(
        3.8, gt=0, description="where the phase, smoothed over level_scale_nm, splits into two levels (vacuum, specimen) at least "
        "this many within-level standard deviations apart, structure is the contrast times the level in [0, 1] (vacuum noise is "
        "not structure); None: contrast only. A uniform specimen's smoothed phase splits at ~2.5-3.3 (bench/RESULTS.md)",
    )
    level_scale_nm: float = Field(0.2, gt=0, description="Gaussian sigma of the smoothed phase for level_separation, nm (averages out a lattice)")
    max_enrichment: float | None = Field(
        4.0, gt=1, description="the floor is raised where needed so that structure draws at most this many times its share of the "
        "field's area (a tube that clips a corner of the field would otherwise take ~6x its share and starve the vacuum around "
        "it); None: off",
    )
    contrast_split_ratio: float | None = Field(
        2.0, gt=1, description="where the measured local contrast, smoothed over contrast_scale_nm, splits into two classes whose "
        "means differ by at least this factor (vacuum noise vs specimen), structure is the contrast rescaled between them (the low "
        "class's mean to 0, the high class's to 1) instead of divided by reference_percentile; None: off. A sparse live "
        "reconstruction lacks the low spatial frequencies that the phase level needs, its contrast does not. Live contrast splits "
        "at 3.3-4.6 on flakes, 2.1-2.3 on nanotubes and 1.7-1.8 on a uniform MoS2 field (bench/RESULTS.md)",
    )


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that splits ``values`` into two classes of largest between-class variance (Otsu)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_high - mean_low) ** 2
    return float(centres[int(np.argmax(between))])


def otsu_classes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``values`` (1-D) split by Otsu's threshold into (low, high), or None: fewer than 20 values, any not finite, all equal,
    or a class with less than 5 % of them."""
    if values.size < 20 or not np.isfinite(values).all() or not np.ptp(values) > 0:
        return None
    threshold = otsu_threshold(values)
    low, high = values[values <= threshold], values[values > threshold]
    if min(low.size, high.size) < 0.05 * values.size:
        return None
    return low, high


def phase_level(potential: np.ndarray, sigma_px: float, mask: np.ndarray, separation: float) -> np.ndarray | None:
    """Where the smoothed phase splits into a low (vacuum) and a high (specimen) level: its place between them in [0, 1].

    The phase smoothed over ``sigma_px`` on the ``mask`` pixels is split in two by Otsu's threshold; the split counts
    only when each side holds >= 5 % of them and their means lie >= ``separation`` pooled standard deviations apart
    (a uniform specimen, whose smoothed phase is one level plus noise, gives None).
    """
    smooth = ndimage.gaussian_filter(potential, sigma_px)
    classes = otsu_classes(smooth[mask])
    if classes is None:
        return None
    low, high = classes
    pooled = np.sqrt((low.var() * low.size + high.var() * high.size) / (low.size + high.size))
    if high.mean() - low.mean() < separation * pooled:
        return None
    return np.clip((smooth - low.mean()) / (high.mean() - low.mean()), 0.0, 1.0)


def structure_map(potential: np.ndarray, origin_nm: tuple[float, float], pixel_nm: float, positions_nm: np.ndarray,
                  options: StructureGuidedOptions, *, measured_only: bool = True) -> np.ndarray:
    """Structure s in [0, 1] on the potential's grid (see the module docstring).

    Args:
        potential: (ny, nx) phase in rad (a reconstruction, or the ground truth on the same grid).
        origin_nm: (x, y) of pixel [0, 0]; pixel_nm: grid pixel, nm.
        positions_nm: (N, 2) measured positions (x, y), nm.
        measured_only: False for a ground truth, which is known everywhere.
    """
    v = np.asarray(potential, dtype=np.float64)
    sigma = options.contrast_scale_nm / pixel_nm
    mean = ndimage.gaussian_filter(v, sigma)
    local_var = np.clip(ndimage.gaussian_filter(v * v, sigma) - mean * mean, 0.0, None)
    contrast = np.sqrt(local_var)
    if measured_only and len(positions_nm):
        ys, xs = np.mgrid[0 : v.shape[0], 0 : v.shape[1]]
        pixels = np.column_stack([origin_nm[0] + xs.ravel() * pixel_nm, origin_nm[1] + ys.ravel() * pixel_nm])
        dist, _ = cKDTree(np.asarray(positions_nm, dtype=np.float64)).query(pixels)
        seen = (dist <= options.probe_radius_nm).reshape(v.shape).astype(np.float64)
        spread = options.spread_nm / pixel_nm
        weight = ndimage.gaussian_filter(seen, spread)
        prior_weight = 0.05
        normalised = _normalised_contrast(contrast, seen > 0, sigma, options)
        normalised = _with_level(normalised, v, seen > 0, pixel_nm, options)
        s = (ndimage.gaussian_filter(normalised * seen, spread) + 0.5 * prior_weight) / (weight + prior_weight)
    else:
        s = _normalised_contrast(contrast, np.ones(v.shape, dtype=bool), sigma, options)
        s = _with_level(s, v, np.ones(v.shape, dtype=bool), pixel_nm, options)
    return np.clip(s, 0.0, 1.0)


def contrast_split(contrast: np.ndarray, mask: np.ndarray, ratio: float) -> tuple[float, float] | None:
    """The means (low, high) of the two Otsu classes of ``contrast[mask]`` when each holds >= 5 % and high >= ``ratio`` x low."""
    classes = otsu_classes(contrast[mask])
    if classes is None or classes[1].mean() < ratio * classes[0].mean():
        return None
    return float(classes[0].mean()), float(classes[1].mean())


def _normalised_contrast(contrast: np.ndarray, mask: np.ndarray, sigma_px: float, options: StructureGuidedOptions) -> np.ndarray:
    """Contrast in [0, 1]: rescaled between its two classes where it splits (``contrast_split_ratio``), else divided by its
    ``reference_percentile`` over ``mask``."""
    if not mask.any():
        return np.zeros_like(contrast)
    if options.contrast_split_ratio is not None:
        smooth = ndimage.gaussian_filter(contrast, sigma_px)
        split = contrast_split(smooth, mask, options.contrast_split_ratio)
        if split is not None:
            low, high = split
            return np.clip((smooth - low) / (high - low), 0.0, 1.0)
    reference = np.percentile(contrast[mask], options.reference_percentile)
    return np.clip(contrast / reference, 0, 1) if reference > 0 else np.zeros_like(contrast)


def _with_level(structure: np.ndarray, potential: np.ndarray, mask: np.ndarray, pixel_nm: float, options: StructureGuidedOptions) -> np.ndarray:
    """``structure`` times the phase level where the field splits into vacuum and specimen (``level_separation``).

    In vacuum a sparse reconstruction's contrast is noise, as strong as a weak specimen's; its level tells them apart.
    """
    if options.level_separation is None:
        return structure
    level = phase_level(potential, options.level_scale_nm / pixel_nm, mask, options.level_separation)
    return structure if level is None else structure * level


def enrichment_floor(structure_share: float, floor: float, max_enrichment: float | None) -> float:
    """The density floor, raised so that a field whose structure covers ``structure_share`` of it (mean s in [0, 1]) gives
    structure at most ``max_enrichment`` times its share of the positions: with s in {0, 1} structure draws
    1 / (share + (1 - share) floor) times its share."""
    if max_enrichment is None or structure_share >= 1.0:
        return floor
    needed = (1.0 / max_enrichment - structure_share) / (1.0 - structure_share)
    return float(min(1.0, max(floor, needed)))


def place_by_density(candidates_nm: np.ndarray, density: np.ndarray, positions_nm: np.ndarray, n: int, max_gap_nm: float) -> np.ndarray:
    """Greedy density-weighted farthest-point sampling: (n, 2) of ``candidates_nm`` maximising d * sqrt(density).

    ``density`` (N,) > 0 per candidate; d is the distance to the nearest of
    ``positions_nm`` or of the positions already chosen; candidates farther than
    ``max_gap_nm`` from all of them come first.
    """
    cand = np.asarray(candidates_nm, dtype=np.float64)
    if n > len(cand):
        raise ValueError(f"asked for {n} positions but there are only {len(cand)} candidates")
    weight = np.sqrt(np.clip(np.asarray(density, dtype=np.float64), 1e-6, None))
    if len(positions_nm):
        d, _ = cKDTree(np.asarray(positions_nm, dtype=np.float64)).query(cand)
    else:
        d = np.full(len(cand), np.inf)
    chosen = np.empty((n, 2))
    for i in range(n):
        finite = np.where(np.isfinite(d), d, 1e9)
        score = finite * weight + np.where(finite > max_gap_nm, 1e6 * finite, 0.0)
        j = int(np.argmax(score))
        chosen[i] = cand[j]
        d = np.minimum(d, np.hypot(cand[:, 0] - cand[j, 0], cand[:, 1] - cand[j, 1]))
    return chosen


class StructureGuidedPlanner:
    """Next positions from the current reconstruction (see the module docstring); stateless."""

    name = "structure-guided"
    version = "structure-guided-4"  # 2: the phase-level gate; 3: the contrast split; 4: the enrichment cap (max_enrichment)

    def __init__(self, options: StructureGuidedOptions | None = None):
        self.options = options or StructureGuidedOptions()

    def warmup(self) -> None:
        """Plan once on a small synthetic field (the service calls this before it reports ready)."""
        fov = (0.0, 0.0, 0.5, 0.5)
        first = self.first_positions(fov, 8, 16)
        self.next_positions(np.zeros((20, 20)), (-0.1, -0.1), 0.04, fov, first, 8)

    def plan(self, requests) -> list[np.ndarray]:
        """The service's planner seam: for each request (``service.planner.PlanRequest`` fields) its next ``n_next`` positions.

        Batch 0, and any batch the service has no reconstruction for yet, continues the
        coarse-to-fine sparse grid of the session's budget while it is unmeasured, then
        falls back to farthest-point placement; later batches follow the reconstruction.
        """
        out = []
        for r in requests:
            measured = np.asarray(r.positions_nm, dtype=np.float64).reshape(-1, 2)
            if r.potential is None or r.grid_origin_nm is None or r.grid_pixel_nm is None:
                if r.batch_index == 0 or len(measured) == 0:
                    out.append(sparse_grid_coarse_to_fine(r.fov_nm, r.budget)[len(measured) : len(measured) + r.n_next])
                    continue
                out.append(self.next_positions(None, None, None, r.fov_nm, measured, r.n_next))
                continue
            out.append(self.next_positions(np.asarray(r.potential), tuple(r.grid_origin_nm), float(r.grid_pixel_nm), r.fov_nm, measured, r.n_next,
                                           budget=r.budget))
        return out

    def first_positions(self, fov_nm, n: int, budget: int | None = None) -> np.ndarray:
        """(n, 2) nm: the first sub-sequence, the coarsest level of the coarse-to-fine sparse grid of ``budget``."""
        return sparse_grid_coarse_to_fine(fov_nm, budget or n)[:n]

    def next_positions(self, potential: np.ndarray | None, origin_nm: tuple[float, float] | None, pixel_nm: float | None,
                       fov_nm, positions_nm: np.ndarray, n: int, *, measured_only: bool = True, budget: int | None = None) -> np.ndarray:
        """(n, 2) positions in nm inside ``fov_nm`` for the next sub-sequence.

        Args:
            potential: (ny, nx) phase in rad on the grid (origin_nm, pixel_nm); None
                (nothing reconstructed yet): uniform density (farthest-point sampling).
            positions_nm: (N, 2) positions measured so far.
            n: how many to place.
            measured_only: False when ``potential`` is the ground truth (the oracle).
            budget: the scan's total positions; with it, a field that shows no
                featureless part (less than ``uniform_below`` of the candidates with
                structure below ``featureless_below``) continues the coarse-to-fine sparse
                grid of that budget: on a uniform specimen there is nothing to adapt to,
                and the grid is the best fixed pattern there.
        """
        fov = check_fov(fov_nm)
        positions = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2)
        candidates = candidate_raster(fov, self.options.candidate_step_nm)
        if potential is None:
            density = np.ones(len(candidates))
        else:
            s = structure_map(potential, origin_nm, pixel_nm, positions, self.options, measured_only=measured_only)
            cols = (candidates[:, 0] - origin_nm[0]) / pixel_nm
            rows = (candidates[:, 1] - origin_nm[1]) / pixel_nm
            s_at = ndimage.map_coordinates(s, [rows, cols], order=1, mode="nearest")
            if budget is not None and float(np.mean(s_at < self.options.featureless_below)) < self.options.uniform_below:
                grid = self._unmeasured_grid(fov, budget, positions)
                if len(grid) >= n:
                    return grid[:n]
            floor = enrichment_floor(float(np.mean(s_at)), self.options.floor, self.options.max_enrichment)
            density = floor + (1.0 - floor) * s_at
        return place_by_density(candidates, density, positions, n, self.options.max_gap_nm)

    def _unmeasured_grid(self, fov, budget: int, positions: np.ndarray) -> np.ndarray:
        """The coarse-to-fine sparse grid of ``budget``, less its points within a candidate step of a measured position.

        (A measured position sits at most step / sqrt(2) from the grid point it was snapped from.)
        """
        grid = sparse_grid_coarse_to_fine(fov, budget)
        if not len(positions):
            return grid
        d, _ = cKDTree(positions).query(grid)
        return grid[d > self.options.candidate_step_nm]
