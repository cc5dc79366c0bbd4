"""Response bodies of the REST API as pydantic models: what the OpenAPI document promises and what ``ptychoscan.client`` parses.

The service builds these bodies as plain dicts (``Session.status``, ``Service.readiness``,
...) and sends them unchanged; the models here only describe them, so the JSON on the
wire does not depend on pydantic's serialisation. Every model allows extra keys: a newer
service may add fields without breaking an older client. Only pydantic is imported: the
client uses these models without the service's dependencies. Units: nm, mrad, eV, s;
positions (x, y).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROBLEM_TYPE = "https://ptychoscan.invalid/problems/"
"""prefix of every problem ``type``; the rest is the problem's kind (unknown-session, wrong-state, invalid-request, ...)."""


class Open(BaseModel):
    """A response body: extra keys allowed (a newer service may send more)."""

    model_config = ConfigDict(extra="allow")


class FieldError(BaseModel):
    """One field a request was refused for (a 422 of request validation)."""

    loc: str = Field(..., description="where: the field's path, dot-separated, e.g. fov_nm.2 or query.timeout_s")
    msg: str = Field(..., description="what is wrong with it")
    type: str = Field(..., description="pydantic's error type, e.g. missing, greater_than, value_error")


class ProblemDetails(BaseModel):
    """The body of every error response (RFC 9457, application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(..., description=f"{PROBLEM_TYPE}<kind>, e.g. unknown-session, wrong-state, invalid-request, not-ready")
    title: str = Field(..., description="the HTTP reason phrase")
    status: int = Field(..., ge=400, le=599, description="the HTTP status code")
    detail: str = Field(..., description="what went wrong, one line")
    errors: list[FieldError] | None = Field(
        None, description="request validation (422 invalid-request): every field refused; absent for other problems"
    )

    @property
    def kind(self) -> str:
        """The problem's kind: ``type`` without ``PROBLEM_TYPE`` (e.g. unknown-session)."""
        return self.type.removeprefix(PROBLEM_TYPE)


class Health(Open):
    status: str = Field(..., description="ok while the process serves requests")


class ReadinessChecks(Open):
    planner_warm: bool
    storage_writable: bool
    ingest_connected: bool
    accepting_sessions: bool


class DetectorStream(Open):
    """One detector endpoint the service reads (PULL)."""

    connected: bool
    messages: int = Field(..., description="stream messages received")
    callback_errors: int
    required: bool = Field(..., description="configured in the settings (readiness waits for it), not only named by a session")
    error: str | None = Field(None, description="why its socket could not be opened")


class ReadinessDetail(Open):
    warm_error: str | None
    storage_error: str | None
    ingest: dict[str, DetectorStream] = Field(..., description="detector endpoint -> its stream")
    receive_loop: str = Field(
        ..., description="what drains the detector sockets: 'compiled' (the C receive loop), 'python: <why not compiled>', or 'not started'"
    )
    load_errors: list[str] = Field(..., description="session files in storage that could not be loaded at start")
    auth: str = Field(..., description="api-key or disabled")


class Readiness(Open):
    """``/readyz``: 200 when every check is true, else 503 with the same body."""

    ready: bool
    checks: ReadinessChecks
    detail: ReadinessDetail


class StrategyInfo(Open):
    requested: str | None
    used: str | None = Field(..., description="the planner that plans the batches")
    planner_version: str | None
    fallback: str | None = Field(..., description="why another planner is used than requested; None if none")


class CurrentBatch(Open):
    batch_id: int
    status: str = Field(..., description="issued, told, complete or reconstructed")
    series: int | None = Field(..., description="the detector series it was told with; None while issued")
    size: int = Field(..., description="positions")
    frames_missing: int


class ChunkTimeline(Open):
    batch_id: int
    positions: int
    status: str
    acquisition_s: float | None = Field(..., description="first to last frame's arrival, scaled to n dwell intervals, s")
    frames_per_s: float | None
    decision_latency_s: float | None = Field(..., description="last frame of this batch -> next batch issued, s")
    update_shrunk: bool | None = Field(
        None, description="its reconstruction was shrunk to keep pace with the microscope (recon_deadline_fraction); null until reconstructed"
    )


class StreamErrorNote(Open):
    kind: str
    detail: str
    at_unix: float


class ProbeStatus(Open):
    """The probe a session is reconstructed with: the request's aberrations (source nominal) or retrieved from its patterns."""

    source: str | None = Field(None, description="nominal or retrieved")
    state: str | None = Field(None, description="with probe: retrieve: queued, running, done or failed (absent: nominal probe)")
    defocus_nm: float | None = None
    astigmatism_nm: float | None = None
    astigmatism_angle_deg: float | None = None
    cs_um: float | None = None
    loss: float | None = Field(None, description="loss of the short reconstruction with the retrieved probe (done)")
    positions_used: int | None = None
    evaluations: int | None = Field(None, description="the job's evaluations: aberration sets scored (nelder-mead) or probe updates (gradient)")
    seconds: float | None = None
    error: str | None = Field(None, description="why the retrieval failed (the nominal probe stays)")
    frames: int | None = Field(None, description="the session's frames when the job that made this probe was queued (those it used)")
    landed_frames: int | None = Field(None, description="the session's frames when the job that made this probe ended (in use from then)")
    refinements: int | None = Field(None, description="refinements that succeeded since the retrieval")
    refinement_attempts: int | None = Field(None, description="refinements that ended, done or failed (at most probe_refinements_max)")
    refinement: dict | None = Field(None, description="the latest refinement: state (queued, running, done, failed), frames, error (failed: "
                                    "the probe in use stays)")
    history: list[dict] | None = Field(None, description="each retrieval and refinement (the first and the latest ones): kind, state, "
                                       "frames, landed_frames (frames in when it came), its coefficients, loss, positions_used, "
                                       "evaluations, seconds or error")


class PositionCorrectionStatus(Open):
    """How the converged reconstruction moved the positions (session ``position_correction``)."""

    corrected: int = Field(..., description="positions refined")
    rms_shift_nm: float = Field(..., description="rms distance of the corrected from the measured positions, nm")
    max_shift_nm: float = Field(..., description="largest such distance, nm")
    scan_matrix: list[list[float]] | None = Field(None, description="fitted scan matrix I + D (rows x, y): 1 % scan distortion shows as 0.01")


class ConvergedStatus(Open):
    state: str = Field(..., description="queued, running, done or failed")
    passes: int | None = Field(None, description="passes it ran (done)")
    final_loss: float | None = Field(None, description="loss after the last pass (done)")
    seconds: float | None = Field(None, description="wall time it took, s (done)")
    error: str | None = Field(None, description="why it failed (failed)")
    probe: ProbeStatus | None = Field(None, description="the probe it was made with (done)")
    positions: PositionCorrectionStatus | None = Field(None, description="position correction's account (done, with position_correction)")


class ReconstructionSummary(Open):
    shape: list[int] = Field(..., description="(rows, columns) of the potential")
    pixel_nm: float | None
    origin_nm: list[float] = Field(..., description="(x, y) of pixel (0, 0), nm")
    final_loss: float | None


class SessionStatus(Open):
    """A session's status: state, counters, the batch in progress, the latest reconstruction's geometry."""

    session_id: str
    state: str = Field(..., description="created, acquiring, reconstructing, done, stopped or failed")
    error: str | None
    params: dict[str, Any] = Field(..., description="the create request, as accepted (SessionCreate)")
    strategy: StrategyInfo
    budget: int
    positions_issued: int
    frames_received: int
    frames_persisted: int
    batches_issued: int
    batches_reconstructed: int
    current_batch: CurrentBatch | None
    chunks: list[ChunkTimeline] | None = Field(None, description="per batch, in order; absent for a session finished before a restart")
    stream_errors: dict[str, int] = Field(..., description="stream problems charged to this session, by kind")
    recent_errors: list[StreamErrorNote]
    reconstruction: ReconstructionSummary | None
    probe: ProbeStatus | None = Field(None, description="the probe the session is reconstructed with")
    converged_reconstruction: ConvergedStatus | None = Field(
        None, description="a done session's converged reconstruction (absent: none was asked for, or the session is not done)"
    )
    created_unix: float
    file: str = Field(..., description="the session file's name in the service's storage")


class SessionList(Open):
    sessions: list[SessionStatus]


class Reconstruction(Open):
    """The latest reconstruction as JSON (Accept: application/json; PNG and .npy bodies are the same array)."""

    shape: list[int]
    pixel_nm: float
    origin_nm: list[float] = Field(..., description="(x, y) of pixel (0, 0), nm")
    reconstructions: int = Field(..., description="reconstructions so far (one per batch)")
    kind: str = Field(
        "live", description="live: the latest chunk's (the planner's working image); converged: a done session's converged reconstruction"
    )
    potential: list[list[float]] = Field(..., description="projected potential, rad, rows (y) of columns (x)")


class SessionPositions(Open):
    """Every issued position, by slot, with its batch and whether its frame is in."""

    session_id: str
    fov_nm: list[float] = Field(..., description="(x0, y0, width, height), nm")
    positions_nm: list[list[float]] = Field(..., description="(x, y) per slot, nm: measured where reported, else issued")
    batch: list[int]
    received: list[bool]
    latest_batch: int | None


class BatchAbandoned(Open):
    """What abandoning a batch did: its positions still missing a frame are issued again (ask returns them)."""

    batch_id: int
    series: int | None = Field(..., description="the series it had been told with, now cut off (its late frames are refused); None if it was not told")
    positions_reissued: int = Field(..., description="positions still missing a frame, issued again")
    frames_kept: int = Field(..., description="frames already stored for the batch (each at the position it was bound to)")
