"""Partial coherence of a real probe: a spread of defocus and a source of finite size.

A real electron source is neither monochromatic nor a point. The energy spread (with the
lens's chromatic aberration) spreads the defocus, and the demagnified source spreads the
probe's position; both add the diffraction intensities of slightly different coherent
probes. ``PartialCoherence.nodes`` gives those probes as Gauss-Hermite quadrature nodes of
Gaussian spreads (defocus offset nm, x and y offsets nm, weight). One model for both sides:
the simulator (``sim_microscope.simulate``) adds the intensities of these probes, and the
reconstructor, when told (``ReconOptions.coherence``), models each pattern as the same
weighted sum over incoherent probe modes (``recon.probe_modes``). Not told (the default),
its probe is coherent and the spread is a model error the data carry.
"""

from __future__ import annotations

import itertools

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class PartialCoherence(BaseModel):
    """Gaussian spreads of defocus (temporal) and probe position (spatial), and how finely to sample them."""

    model_config = ConfigDict(extra="forbid")

    focal_spread_nm: float = Field(0.0, ge=0, allow_inf_nan=False,
                                   description="standard deviation of the defocus, nm (chromatic: Cc dE/E; a few nm at 60-300 kV)")
    source_size_nm: float = Field(0.0, ge=0, allow_inf_nan=False,
                                  description="standard deviation of the demagnified source per axis, nm (spreads the probe position)")
    nodes_per_axis: int = Field(3, ge=1, le=7, description="Gauss-Hermite nodes per spread (defocus, x, y): up to nodes^3 coherent probes")

    @property
    def is_coherent(self) -> bool:
        return self.focal_spread_nm == 0 and self.source_size_nm == 0

    def nodes(self) -> list[tuple[float, float, float, float]]:
        """(defocus offset nm, x offset nm, y offset nm, weight) of every coherent probe; weights sum to 1."""
        x, w = np.polynomial.hermite_e.hermegauss(self.nodes_per_axis)  # nodes and weights for exp(-x^2 / 2)
        w = w / w.sum()
        focal = list(zip(x * self.focal_spread_nm, w, strict=True)) if self.focal_spread_nm > 0 else [(0.0, 1.0)]
        source = list(zip(x * self.source_size_nm, w, strict=True)) if self.source_size_nm > 0 else [(0.0, 1.0)]
        return [(float(dz), float(dx), float(dy), float(wz * wx * wy))
                for (dz, wz), (dx, wx), (dy, wy) in itertools.product(focal, source, source)]
