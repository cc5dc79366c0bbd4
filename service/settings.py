"""Service configuration (pydantic-settings): env prefix ``PTYCHOSCAN_``, optional YAML/TOML/JSON file, CLI flags on top."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from detector_stream.endpoints import check_endpoint

FIRST_RETRIEVAL: dict[str, Any] = {
    "defocus_step_nm": 4.0,
    "astigmatism_magnitudes_nm": (2.0, 4.0),
    "astigmatism_angles": 3,
    "refine_evaluations": 20,
}
"""The service's first probe retrieval of a live session (``recon.probe_retrieval.RetrievalOptions`` fields; the rest its
defaults): a coarse search (11 defocus values, 6 astigmatism points, 20 Nelder-Mead evaluations: 37 short reconstructions
instead of 119, a third of the CPU) so that it lands while the scan still runs: on 2 CPU cores, queued at 50 frames of a
500-position MoS2 closed-loop scan, it came into use at frame 200, where the full search came after the scan
(bench/RESULTS.md, issue 16, live refinement). It is coarser (defocus 0.2-1.3 nm off, Cs 1.6-2.8 um off there); the
refinements that follow correct it."""

PROBE_REFINEMENT: dict[str, Any] = {
    "global_search": False,
    "max_positions": 512,
    "refine_evaluations": 20,
    "refine_steps": (0.5, 0.5, 1.0),
}
"""A live session's probe refinement with ``probe_refinement_method: nelder-mead`` (``RetrievalOptions`` fields, under
``probe_refinement``'s): the probe in use scored on (up to 512 of) the positions so far, then 20 Nelder-Mead evaluations
around it with steps of 0.5 nm, 0.5 nm and 1 um."""


class ServiceSettings(BaseSettings):
    """Everything ``ptychoscan serve`` can be told. Lists come from env as JSON (``PTYCHOSCAN_API_KEYS='["k"]'``)."""

    model_config = SettingsConfigDict(env_prefix="PTYCHOSCAN_", extra="forbid", env_parse_none_str="null")
    """An environment variable set to ``null`` is None (e.g. PTYCHOSCAN_RECON_DEADLINE_FRACTION=null: never shrink)."""

    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: pick a free one)")
    storage: Path = Field(Path("out/sessions"), description="folder of the session files (one HDF5 file per session)")
    api_keys: list[str] = Field(default_factory=list, description="API keys with scope 'control' (create, ask, tell, delete) and 'read'")
    read_api_keys: list[str] = Field(default_factory=list, description="API keys with scope 'read' only (GET under /api/v1)")
    open_reads: bool = Field(True, description="GET under /api/v1 needs no key (false: a key with scope 'read' or 'control')")
    max_request_bytes: int = Field(1024**2, ge=1024, description="largest request body, bytes (413 beyond; read only after the key was accepted)")
    detectors: list[str] = Field(default_factory=list, description="detector stream endpoints to connect at start (tcp://host:port); always allowed")
    detector_allow: list[str] = Field(
        default_factory=lambda: ["tcp://127.0.0.1:*", "tcp://localhost:*", "tcp://[::1]:*"],
        description="shell-style patterns (fnmatch) of the detector endpoints a session may name, besides `detectors`; default: loopback TCP only",
    )
    detector_connection: Literal["in_flight", "always"] = Field(
        "in_flight",
        description="in_flight: hold a PULL connection to a detector only while a session has a batch in flight on it, so another consumer "
        "(LiberTEM-live) can share the detector (PUSH deals messages round-robin); always: stay connected to every detector configured or named "
        "by a session (forward_endpoint implies always)",
    )
    detector_quiet_s: float = Field(
        1.0, gt=0, le=60, description="in_flight: a detector with nothing in flight is disconnected once it has sent nothing for this long (s)"
    )
    forward_endpoint: str | None = Field(
        None,
        description="forward every message received from the detectors, byte for byte, on a PUSH socket bound here (tcp://host:port) for a "
        "second consumer such as LiberTEM-live; port 0 picks a free one; the detectors then stay connected (None: off)",
    )
    forward_hwm: int = Field(
        1000, ge=1, description="messages queued for the forward socket's consumer at most; beyond (or with nobody connected) they are dropped and counted"
    )
    ask_timeout_s: float = Field(10.0, gt=0, le=300, description="default long-poll of ask before 503 + Retry-After")
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with a 503 (ask found no batch ready in time; the service is shutting down)")
    max_buffered_frames: int = Field(20_000, ge=1, description="frames kept for series not yet told (all endpoints together)")
    max_buffered_bytes: int = Field(
        512 * 1024**2, ge=1, description="bytes of decoded frames kept for series not yet told (all endpoints together); the oldest series go first"
    )
    resume_told_timeout_s: float = Field(
        10.0, gt=0, description="after a restart, a told batch whose series sends none of its missing frames for this long (s) is re-issued"
    )
    flush_interval_s: float = Field(0.2, gt=0, description="frames received are flushed to disk at least this often (s)")
    prefault_session_memory: bool = Field(
        True,
        description="make the frame memory of each issued batch resident on a helper thread before its frames come (Linux >= 5.14, "
        "madvise MADV_POPULATE_WRITE; elsewhere nothing is done), so that the ingest does not pay the first touch of each page",
    )
    compressed_patterns: bool = Field(
        False,
        description="store a new session file's patterns bitshuffle-LZ4 compressed, the detector's own blobs as chunks where they can be"
        " (service.pattern_chunks: ~1 us instead of ~9 us a 64x64 frame to disk, ~5x smaller files). Off by default: a compressed chunk"
        " moves when it is rewritten, so a kill -9 mid-flush can cost the rows of that chunk flushed before; uncompressed rows are"
        " rewritten in place",
    )
    max_sessions: int = Field(64, ge=1, description="active sessions at most")
    max_budget: int = Field(20_000, ge=1, description="largest budget (positions) a session may ask for")
    max_grid_pixels: int = Field(4096, ge=64, description="largest reconstruction grid side (fov / pixel + K) a session may ask for")
    max_session_bytes: int = Field(2 * 1024**3, ge=1, description="largest frame stack of one session as float32 (budget * K^2 * 4 bytes: what a reconstruction of all its frames holds)")
    recon_iterations: int = Field(5, ge=1, description="iterations of a full reconstruction: first and last chunk, or every chunk with recon_update=full (paper: 5)")
    recon_update: Literal["incremental", "full"] = Field(
        "incremental", description="between first and last chunk: incremental (new positions + a replay sample, warm-started) or full (every position so far)"
    )
    recon_update_iterations: int = Field(2, ge=1, description="iterations of an incremental update")
    recon_replay: float = Field(1.0, ge=0, description="older positions revisited per new position in an incremental update")
    recon_deadline_fraction: float | None = Field(
        0.5, gt=0, description="shrink incremental updates when a round would take longer than this fraction of the chunks' acquisition time (None: never)"
    )
    recon_batch_positions: int | None = Field(
        16, ge=1, description="positions per gradient update (None: full batch); 16 scored higher than recon's 32 on sparse scans (bench/RESULTS.md)"
    )
    recon_subpixel_steps: int | None = Field(
        32, ge=2, description="round probe positions to 1/steps of a pixel so new positions reuse cached shifted probes (None: exact; 32: SSIM unchanged, updates ~10 % cheaper)"
    )
    recon_detector_binning: int | None = Field(
        None, ge=1, description="detector binning the reconstructor models (None: recon's default, 1; 2 models a 2x-binned detector at ~4x the cost)"
    )
    recon_converged: bool = Field(
        True,
        description="when a session is done, reconstruct all its frames once more from zero with the evaluation's converged recipe "
        "(full-batch gradient descent, Nesterov momentum, up to 60 passes), in the background between decisions; stored as "
        "<id>.converged.h5 beside the session file and served as its reconstruction",
    )
    recon_final_slice_s: float = Field(
        0.005, ge=0, description="a session's final reconstruction (its last chunk, run a mini-batch step at a time between "
        "decisions) advances at least this long per round (s), so that it also finishes while chunks keep arriving; a chunk that "
        "completes meanwhile waits at most this and one step",
    )
    recon_converged_backlog: int = Field(
        20, ge=0, description="after a restart, how many of the most recent done sessions without a converged reconstruction are "
        "queued for one (after an upgrade every older session would be: hours of background work on a CPU); the rest are logged "
        "and can be made by hand with ptychoscan reconstruct FILE --converged",
    )
    probe_retrieval_frames: int = Field(
        50, ge=4, description="a session with probe: retrieve has its probe retrieved once this many of its frames are in (or its whole budget)"
    )
    probe_retrieval: dict[str, Any] = Field(
        default_factory=lambda: dict(FIRST_RETRIEVAL),
        description="the first probe retrieval's recon.probe_retrieval.RetrievalOptions fields (e.g. {\"refine_evaluations\": 40}); "
        "default FIRST_RETRIEVAL: a coarse search (defocus -20..20 nm step 4, |C12| 2 and 4 nm x 3 angles, 20 Nelder-Mead "
        "evaluations: 37 short reconstructions), refined later; {} for RetrievalOptions' full search (119)",
    )
    probe_refinement_frames: int | None = Field(
        150, ge=1, description="after the first retrieval, refine a session's probe each time this many more of its frames are in "
        "(a background job on all its frames so far; None: never)",
    )
    probe_refinements_max: int = Field(8, ge=0, description="at most this many refinements per session (done or failed)")
    probe_refinement_method: Literal["gradient", "nelder-mead"] = Field(
        "gradient", description="how a refinement searches: gradient (a short reconstruction of the 256 positions nearest the field's "
        "centre, 20 passes, Adam steps on the coefficients every 5: service.probe_gradient) or nelder-mead (a local simplex search "
        "around the probe in use, each point scored by a short reconstruction); measured on MoS2, gradient got closer per CPU second",
    )
    probe_refinement: dict[str, Any] = Field(
        default_factory=dict, description="options of the refinements: service.probe_gradient.GradientRefinementOptions fields "
        "(gradient; e.g. {\"passes\": 30}) or recon.probe_retrieval.RetrievalOptions fields over PROBE_REFINEMENT's (nelder-mead)",
    )
    probe_refinement_max_change: tuple[float, float, float] = Field(
        (3.0, 3.0, 10.0), description="a refinement moving defocus (nm), |C12| as a complex number (nm) or Cs (um) by more than this "
        "is a divergence: it fails and the probe in use stays",
    )
    torch_threads: int = Field(2, ge=1, description="torch CPU threads of the compute worker")
    device: str = Field("auto", description="auto (CUDA when present), cpu or cuda")
    policy_checkpoint: Path | None = Field(None, description="GRU policy checkpoint for strategy 'adaptive' (None: the shipped one)")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="how long shutdown waits for the chunk in flight")

    @field_validator("detectors")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        return [check_endpoint(ep) for ep in v]

    @field_validator("forward_endpoint")
    @classmethod
    def _forward(cls, v: str | None) -> str | None:
        if v is not None:
            host, port = v.rsplit(":", 1) if ":" in v else (v, "")
            check_endpoint(f"{host}:1" if port == "0" else v)  # port 0: a free one, picked at bind
        return v

    @property
    def detectors_on_demand(self) -> bool:
        """Connect a detector only while a batch is in flight on it (not when forwarding: the second consumer needs the whole stream)."""
        return self.detector_connection == "in_flight" and self.forward_endpoint is None

    def detector_allowed(self, endpoint: str) -> bool:
        """A session may stream from ``endpoint``: one of ``detectors`` or matching a ``detector_allow`` pattern (case-sensitive)."""
        return endpoint in self.detectors or any(fnmatch.fnmatchcase(endpoint, pattern) for pattern in self.detector_allow)


def load_settings(path: str | Path | None = None, **overrides) -> ServiceSettings:
    """Settings from env (``PTYCHOSCAN_*``), then the optional file, then non-None ``overrides``."""
    from ptychoscan.config import ConfigError, read_mapping

    data = read_mapping(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServiceSettings(**data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ConfigError(f"{path or 'settings'}: {where}: {first['msg']}") from None
