"""Request and response bodies of the REST API (units: nm, mrad, eV; positions (x, y))."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from detector_stream.endpoints import check_endpoint

Strategy = Literal["adaptive", "structure-guided", "sparse-grid"]

FOV_ORIGIN_MAX_NM = 1e6
"""|x0|, |y0| of a field of view at most 1 mm (a stage's travel): beyond it float64 positions lose the pm a probe step needs."""
FOV_SIDE_MAX_NM = 1e4
"""width, height of a field of view at most 10 um (the grid limit, max_grid_pixels, usually bites first)."""
ENERGY_EV = (1e3, 1e6)
"""beam energy range, eV (1 keV - 1 MeV; microscopes run 20-300 keV)."""
CONVERGENCE_MAX_MRAD = 200.0
DETECTOR_PIXEL_MAX_MRAD = 100.0
DEFOCUS_MAX_NM = 1e5
"""|defocus| at most 100 um."""
ENDPOINT_PATTERN = r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):[0-9]{1,5}|ipc://[!-~]+)$"
"""what ``detector_stream.endpoints.check_endpoint`` accepts, as the OpenAPI document's pattern (the check also bounds the port)."""


class SessionCreate(BaseModel):
    """A scan to run: where the detector streams, the field of view, the budget and the beam (paper defaults: MoS2 at 60 kV)."""

    model_config = ConfigDict(extra="forbid")

    detector_endpoint: str = Field(
        ...,
        description="where the service connects (PULL) to the detector's stream v1, which the detector binds (PUSH): tcp://host:port"
        " (host a name, IPv4 or [IPv6] address; port 1-65535) or ipc://path; it must also be allowed by the service's settings"
        " (detectors, detector_allow), else 422",
        examples=["tcp://127.0.0.1:9999", "tcp://detector.local:31001"],
        json_schema_extra={"pattern": ENDPOINT_PATTERN},
    )
    fov_nm: tuple[float, float, float, float] = Field(..., description="(x0, y0, width, height) of the probe positions, nm")
    budget: int = Field(250, ge=1, description="total probe positions (paper: 250-500)")
    chunk: int = Field(50, ge=1, description="positions per batch / reconstruction (paper: 50-100)")
    strategy: Strategy = Field("adaptive", description="adaptive (GRU policy), structure-guided (non-learned, from the live reconstruction) or sparse-grid")
    energy_ev: float = Field(60_000.0, ge=ENERGY_EV[0], le=ENERGY_EV[1], description="beam energy, eV (1 keV - 1 MeV)")
    convergence_mrad: float = Field(33.0, gt=0, le=CONVERGENCE_MAX_MRAD, description="probe convergence semi-angle, mrad (at most 200)")
    detector_pixels: int = Field(64, ge=4, le=1024, description="K: patterns are K x K after binning")
    detector_pixel_mrad: float = Field(1.68, gt=0, le=DETECTOR_PIXEL_MAX_MRAD, description="detector pixel after binning, mrad (at most 100)")
    defocus_nm: float = Field(0.0, ge=-DEFOCUS_MAX_NM, le=DEFOCUS_MAX_NM, description="probe defocus, nm (|defocus| at most 100 um)")
    astigmatism_nm: float = Field(0.0, ge=0, le=DEFOCUS_MAX_NM, description="two-fold astigmatism |C12| of the probe, nm (e.g. from the corrector)")
    astigmatism_angle_deg: float = Field(0.0, ge=-360, le=360, description="astigmatism angle, deg from the scan's x axis towards y")
    cs_um: float = Field(0.0, ge=-1e4, le=1e4, description="spherical aberration C30, um (an uncorrected 60-300 kV lens: ~1000 um)")
    probe: Literal["nominal", "retrieve"] = Field(
        "nominal",
        description="nominal: the probe these beam fields make; retrieve: starting from them, the service retrieves defocus, astigmatism and Cs "
        "from the first probe_retrieval_frames frames' patterns (in the background, between decisions), reconstructs with that probe "
        "from then on and refines it every probe_refinement_frames further frames; the status reports it and its history",
    )
    position_correction: bool = Field(
        False,
        description="refine every probe position (and a global affine scan distortion) in the converged end-of-session "
        "reconstruction (recon position correction, bounded to 0.08 nm per position; ~3x its CPU time); the corrected positions "
        "are stored with it and summarised in the status. Live reconstructions use the positions as measured",
    )
    detector_bit_depth: Literal[8, 16, 32] = Field(
        32,
        description="bits per pixel of the detector's frames (SIMPLON bit_depth_image): the session file stores counts as uint16 (8, 16)"
        " or uint32 (32); a frame with counts that type cannot hold is refused as malformed",
    )

    @field_validator("detector_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_endpoint(v)

    @field_validator("fov_nm")
    @classmethod
    def _fov(cls, v):
        if not all(math.isfinite(x) for x in v):
            raise ValueError("must be finite numbers")
        if v[2] <= 0 or v[3] <= 0:
            raise ValueError("width and height must be positive")
        if abs(v[0]) > FOV_ORIGIN_MAX_NM or abs(v[1]) > FOV_ORIGIN_MAX_NM:
            raise ValueError(f"x0 and y0 must be within +-{FOV_ORIGIN_MAX_NM:g} nm")
        if v[2] > FOV_SIDE_MAX_NM or v[3] > FOV_SIDE_MAX_NM:
            raise ValueError(f"width and height must be at most {FOV_SIDE_MAX_NM:g} nm")
        return v

    @model_validator(mode="after")
    def _chunk(self) -> SessionCreate:
        if self.chunk > self.budget:
            raise ValueError(f"chunk ({self.chunk}) must not exceed budget ({self.budget})")
        return self


PositionNm = Annotated[list[float], Field(min_length=2, max_length=2)]
"""(x, y), nm. Documented as an array of 2 numbers, not a tuple: OpenAPI 3.1's prefixItems nested in items is
mis-read by tooling (schemathesis 4.32 refused the whole ask response schema as invalid)."""


class AskResponse(BaseModel):
    batch_id: int | None
    positions_nm: list[PositionNm]
    done: bool


class TellRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_id: int = Field(..., ge=0, le=2**31 - 1)
    series: int = Field(..., ge=0, le=2**62, description="detector series whose frame i is batch position i")
    measured_positions_nm: list[tuple[float, float]] | None = Field(None, description="positions the scan actually reached, nm")

    @field_validator("measured_positions_nm")
    @classmethod
    def _finite(cls, v):
        if v is not None and not all(math.isfinite(a) and math.isfinite(b) for a, b in v):
            raise ValueError("must be finite numbers")
        return v


class TellResponse(BaseModel):
    batch_id: int
    series: int
    accepted: bool
    frames_expected: int
    frames_received: int
