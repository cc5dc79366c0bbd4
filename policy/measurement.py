"""Where an evaluation's patterns come from: a specimen's candidate positions and their noise-free patterns.

Two sources, one interface (``candidates_nm`` and ``noise_free(indices)``):

- ``SimulatedSource``: candidates on a ``candidate_step_nm`` raster (the paper's 0.02 nm)
  over the field; each pattern is simulated the first time a strategy measures it, from
  the dataset's ground-truth phase (``sim_microscope.ondemand``), and kept for the other
  strategies and noise seeds. A 10,000-position raster is never simulated whole.
- ``RasterSource``: the dataset's own stored raster (e.g. abTEM multislice data, which
  the project's simulator cannot reproduce); candidates are its positions.

Noise is added by the caller (``policy.baselines.apply_dose``), so every strategy sees
the same physics and only its positions and its noise draw differ.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import numpy as np

from policy.baselines import candidate_raster
from recon.dataset import Dataset4D
from sim_microscope.ondemand import PhaseObjectSimulator


class MeasurementSource(Protocol):
    """Candidate positions of one specimen and the noise-free pattern at each."""

    candidates_nm: np.ndarray
    """(N, 2) positions (x, y) in nm."""

    def noise_free(self, indices: np.ndarray) -> np.ndarray:
        """(n, K, K) patterns at ``candidates_nm[indices]``: float (unit sum) or the stored counts."""


class RasterSource:
    """The dataset's stored raster."""

    def __init__(self, dataset: Dataset4D):
        self.dataset = dataset
        self.candidates_nm = np.asarray(dataset.positions_nm, dtype=np.float64)

    def noise_free(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.dataset.patterns[np.asarray(indices, dtype=np.int64)])


class SimulatedSource:
    """Candidates on a raster over ``fov_nm``, patterns simulated on demand from the ground truth and cached."""

    def __init__(self, dataset: Dataset4D, fov_nm, candidate_step_nm: float, device=None, cache_limit: int | None = None):
        """``cache_limit``: keep at most this many patterns, the least recently used go first (None: all; an evaluation
        frees its cases after use, but training keeps every specimen for the whole run)."""
        if cache_limit is not None and cache_limit < 0:
            raise ValueError(f"cache_limit must be >= 0 or None, got {cache_limit}")
        self.simulator = PhaseObjectSimulator.from_dataset(dataset, device=device)
        self.cache_limit = cache_limit
        self.candidates_nm = candidate_raster(fov_nm, candidate_step_nm)
        reachable = self.simulator.reachable(self.candidates_nm)
        if not reachable.all():
            raise ValueError(
                f"{int((~reachable).sum())} of {len(reachable)} candidate positions lie too close to the edge of the dataset's "
                "ground truth for a whole probe window: use a smaller field"
            )
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def noise_free(self, indices: np.ndarray) -> np.ndarray:
        idx = [int(i) for i in np.asarray(indices).ravel()]
        missing = sorted({i for i in idx if i not in self._cache})
        # copies: a row view would keep its whole call's array alive after the row itself is evicted
        fresh = {i: p.copy() for i, p in zip(missing, self.simulator.patterns(self.candidates_nm[missing]), strict=True)} if missing else {}
        out = np.stack([fresh[i] if i in fresh else self._cache[i] for i in idx])
        for i in idx:
            if i in self._cache:
                self._cache.move_to_end(i)
        self._cache.update(fresh)
        while self.cache_limit is not None and len(self._cache) > self.cache_limit:
            self._cache.popitem(last=False)
        return out

    def patterns_at(self, positions_nm: np.ndarray) -> np.ndarray:
        """Noise-free patterns at arbitrary positions (not cached): the full raster at its own step."""
        return self.simulator.patterns(positions_nm)

    @property
    def cached(self) -> int:
        """How many patterns the cache holds now (all simulated so far when it has no limit)."""
        return len(self._cache)
