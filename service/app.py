"""The FastAPI application: REST ask/tell under /api/v1, health, readiness, Prometheus metrics.

``create_app(settings)`` builds everything (manager, compute worker, ingest); the
lifespan starts them, resumes sessions found in storage, and on shutdown (SIGTERM via
uvicorn) stops taking sessions, finishes the chunk in flight and flushes every file.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Literal

import numpy as np
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.background import BackgroundWorker
from service.batch_routes import ABANDON_OPERATION, install_batch_routes
from service.compute import ChunkUpdate, ReconBackend, TorchReconBackend
from service.contract import document_security, ok
from service.converged import ConvergedRequest, converged_job
from service.docs_routes import install_api_docs
from service.feed import ChangeFeed, close_on_signals
from service.forward import Forwarder
from service.gate import ApiGate
from service.ingest import Ingest
from service.live_routes import install_live_view
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.models import AskResponse, SessionCreate, TellRequest, TellResponse
from service.png import field_view, grey_png
from service.probe_gradient import GradientRefiner
from service.probe_job import ProbeRetriever, StagedRetriever, probe_job, refinement_job
from service.problems import Problem, document_problems, install_problem_handlers, problem_responses
from service.responses import Health, Readiness, Reconstruction, SessionList, SessionStatus
from service.scheduler import Scheduler
from service.settings import PROBE_REFINEMENT, ServiceSettings
from service.spec import SessionSpec
from service.store import storage_writable

log = logging.getLogger(__name__)
API = "/api/v1"
AUTH_ERRORS = (401, 403)
"""what the API-key gate may answer under /api/v1 (before the route runs)."""
SESSION = "$response.body#/session_id"
SESSION_LINKS = {
    "GetSession": {"operationId": "get_session_api_v1_sessions__session_id__get", "parameters": {"session_id": SESSION}},
    "Ask": {"operationId": "ask_api_v1_sessions__session_id__ask_post", "parameters": {"session_id": SESSION}},
    "Reconstruction": {"operationId": "reconstruction_api_v1_sessions__session_id__reconstruction_get", "parameters": {"session_id": SESSION}},
    "DeleteSession": {"operationId": "delete_session_api_v1_sessions__session_id__delete", "parameters": {"session_id": SESSION}},
}
"""OpenAPI links: the session_id a create answers is the one every per-session operation takes (clients, schemathesis' stateful run)."""
BATCH_LINKS = {
    "Tell": {"operationId": "tell_api_v1_sessions__session_id__tell_post", "parameters": {"session_id": "$request.path.session_id"}, "requestBody": {"batch_id": "$response.body#/batch_id"}},
    "Abandon": {"operationId": ABANDON_OPERATION, "parameters": {"session_id": "$request.path.session_id", "batch_id": "$response.body#/batch_id"}},
}
"""OpenAPI links from an ask's batch: tell it, or abandon it."""
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""methods that get their own metric label; any other is counted as 'other' (a label per invented method grew without bound)."""


class RequestTimer:
    """ASGI middleware: each HTTP request's duration (s) by method, route template and status.

    A plain ASGI wrapper rather than ``@app.middleware("http")``: Starlette's
    BaseHTTPMiddleware runs every request through an extra task and memory streams, on the
    event loop that shares the GIL with ingest and the compute worker.
    """

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # if the app raises before it starts a response

        async def send_and_note_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")  # the router writes the matched route into the scope
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.request_seconds.labels(method, path, str(status)).observe(time.perf_counter() - t0)


class Service:
    """The parts of one running service (what the app's handlers reach through ``app.state.service``)."""

    def __init__(self, settings: ServiceSettings, backend: ReconBackend | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.manager = SessionManager(settings, self.metrics)
        self.feed = ChangeFeed()
        """wakes the live view's event streams when a session changes; closed at shutdown."""
        self.manager.on_change = self.feed.notify
        update = ChunkUpdate(
            mode=settings.recon_update, iterations=settings.recon_iterations, update_iterations=settings.recon_update_iterations, replay=settings.recon_replay,
            deadline_fraction=settings.recon_deadline_fraction,
        )
        options = {"batch_positions": settings.recon_batch_positions, "subpixel_steps": settings.recon_subpixel_steps}
        if settings.recon_detector_binning is not None:
            options["detector_binning"] = settings.recon_detector_binning
        self.backend = backend or TorchReconBackend(update, settings.device, settings.torch_threads, options)
        self.scheduler = Scheduler(self.manager, self.backend, self.metrics, flush_interval_s=settings.flush_interval_s,
                                   final_slice_s=settings.recon_final_slice_s)
        self.background = BackgroundWorker(self._deciding)
        """probe retrievals and converged reconstructions, between decisions (``service.background``)."""
        self.retrieve_probe = ProbeRetriever(settings.probe_retrieval, settings.device)
        self.refine_probe = (GradientRefiner(settings.probe_refinement, settings.device) if settings.probe_refinement_method == "gradient"
                             else ProbeRetriever(PROBE_REFINEMENT | settings.probe_refinement, settings.device))
        self.manager.on_probe_wanted = self._queue_probe
        self.manager.on_probe_refinement_wanted = self._queue_probe_refinement
        if settings.recon_converged and hasattr(self.backend, "converged"):
            self.manager.on_done = self._queue_converged
        forwarder = None
        if settings.forward_endpoint is not None:
            forwarder = Forwarder(settings.forward_endpoint, settings.forward_hwm, self.metrics.forwarded, self.metrics.forward_dropped)
        self.ingest = Ingest(self.manager, settings.detectors, on_demand=settings.detectors_on_demand, quiet_s=settings.detector_quiet_s, forwarder=forwarder)
        self.manager.on_endpoint = self.ingest.ensure
        self.manager.on_batch_issued = self.ingest.poke
        self.warm = False
        self._warmup_thread: threading.Thread | None = None
        self.warm_error: str | None = None
        self.started = False

    def _deciding(self) -> bool:
        """A decision's reconstruction is queued or running (the converged worker waits)."""
        return self.scheduler.busy or self.manager.has_work()

    def _queue_probe(self, s) -> None:
        """A live session's probe retrieval (lock held): its frames so far are copied now."""
        patterns, positions = s.measured_frames()
        self.background.submit(probe_job(s.session_id, patterns, positions, s.spec.beam, s.fov, self.retrieve_probe, self.manager.note_probe,
                                         s.detector_mask.invalid, self.manager.probe_job_wanted))

    def _queue_probe_refinement(self, s) -> bool:
        """A live session's probe refinement (lock held), from the probe in use on all its frames so far (copied now)."""
        patterns, positions = s.measured_frames()
        job = refinement_job(s.session_id, patterns, positions, s.beam, s.fov, self.refine_probe, self.settings.probe_refinement_max_change,
                             self.manager.note_probe_refinement, s.detector_mask.invalid, self.manager.probe_job_wanted)
        return self.background.submit(job)

    def _queue_converged(self, finished) -> None:
        """A done session's converged reconstruction (lock held); which probe it uses is decided when it runs."""
        sid = finished.session_id

        def request() -> ConvergedRequest:
            spec = SessionSpec.from_params(finished.summary["params"])
            probe = self.manager.probe_report(sid) or {}
            retrieved = probe.get("state") == "done"  # retrieved during the scan: used as it is, not retrieved again
            return ConvergedRequest(sid, finished.path, spec.beam.with_reported(probe) if retrieved else spec.beam, spec.fov,
                                    retrieve=spec.retrieve_probe and not retrieved, correct_positions=spec.correct_positions,
                                    probe_source="retrieved" if retrieved else "nominal")

        staged = StagedRetriever(self.retrieve_probe, self.refine_probe, self.settings.probe_refinement_max_change)
        job = converged_job(request, self.backend.converged, self.manager.note_converged, staged)
        if self.background.submit(job):
            self.manager.note_converged(sid, {"state": "queued"})

    def warmup(self) -> None:
        try:
            for strategy in ("sparse-grid", "structure-guided", "adaptive"):
                self.manager.planner_for(strategy).planner.warmup()
            self.backend.warmup()
            self.warm = True
        except Exception as err:  # readiness reports it
            self.warm_error = f"{type(err).__name__}: {err}"
            log.error("warm-up failed: %s", self.warm_error)
        adaptive = self.manager.planner_for("adaptive")
        self.metrics.model.info(
            {
                "planner": adaptive.planner.name,
                "planner_version": adaptive.planner.version,
                "adaptive_fallback": "yes" if adaptive.fallback else "no",
                "reconstructor": getattr(self.backend, "name", type(self.backend).__name__),
            }
        )

    def start(self) -> None:
        self.settings.storage.mkdir(parents=True, exist_ok=True)
        n = self.manager.restore()
        if n:
            log.info("resumed %d session file(s) from %s", n, self.settings.storage)
        self.ingest.start()
        self.scheduler.start()
        self.background.start()
        self._warmup_thread = threading.Thread(target=self.warmup, name="warmup", daemon=True)
        self._warmup_thread.start()
        self.started = True

    def stop(self) -> None:
        self.manager.accepting = False
        self.feed.close()
        self.background.stop(self.settings.shutdown_timeout_s)
        self.scheduler.stop(self.settings.shutdown_timeout_s)
        if self._warmup_thread is not None:
            self._warmup_thread.join(self.settings.shutdown_timeout_s)
        self.ingest.stop()
        self.manager.close()

    def readiness(self) -> dict:
        storage_problem = storage_writable(self.settings.storage) or self.manager.recent_storage_error()
        checks = {
            "planner_warm": self.warm,
            "storage_writable": storage_problem is None,
            "ingest_connected": self.ingest.ready,
            "accepting_sessions": self.manager.accepting,
        }
        detail = {
            "warm_error": self.warm_error,
            "storage_error": storage_problem,
            "ingest": self.ingest.status(),
            "receive_loop": self.ingest.receive_loop,
            "load_errors": self.manager.load_errors,
            "auth": "api-key" if self.settings.api_keys or self.settings.read_api_keys else "disabled",
        }
        return {"ready": all(checks.values()), "checks": checks, "detail": detail}


def create_app(settings: ServiceSettings | None = None, backend: ReconBackend | None = None) -> FastAPI:
    """The service's ASGI app; ``backend`` replaces the torch reconstructor (tests, benchmarks)."""
    settings = settings or ServiceSettings()
    service = Service(settings, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        restore_signals = close_on_signals(service.feed)  # event streams end as soon as the server is told to stop
        await asyncio.to_thread(service.start)
        try:
            yield
        finally:
            log.info("shutting down: finishing the chunk in flight and flushing sessions")
            await asyncio.to_thread(service.stop)
            restore_signals()

    app = FastAPI(
        title="ptychoscan acquisition service",
        version="1",
        description="Ask/tell adaptive scanning for 4D-STEM ptychography (Schloz et al. 2023). Units: nm, mrad, eV; positions (x, y).",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: install_api_docs serves a local one
        redoc_url=None,
    )
    app.state.service = service
    install_problem_handlers(app)
    document_problems(app)
    document_security(app, settings)
    install_api_docs(app)
    app.add_middleware(ApiGate, settings=settings)  # API key and scope, then the body (size-limited)
    app.add_middleware(RequestTimer, metrics=service.metrics)  # outermost: refusals at the gate are timed too
    install_live_view(app, service.manager, service.feed, service.ingest.status)  # /live and its event streams
    install_batch_routes(app, service.manager)  # abandon a batch

    @app.get("/healthz", tags=["operations"], responses={200: ok(Health, "the process serves requests")})
    async def healthz():
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={200: ok(Readiness, "ready: every check true"), 503: ok(Readiness, "not ready: the same body, the failing check false")},
    )
    async def readyz():
        body = await asyncio.to_thread(service.readiness)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse, responses={200: {"description": "Prometheus text exposition format"}})
    async def metrics():
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        f"{API}/sessions",
        status_code=201,
        tags=["sessions"],
        responses={
            201: ok(SessionStatus, "the session's status; plans its first batch", links=SESSION_LINKS),
            **problem_responses(*AUTH_ERRORS, 409, 413, 422, 503, 507, s409="max_sessions active already", s503="shutting down (Retry-After)"),
        },
    )
    async def create_session(body: SessionCreate):
        return await asyncio.to_thread(service.manager.create, body.model_dump(mode="json"))

    @app.get(f"{API}/sessions", tags=["sessions"], responses={200: ok(SessionList, "every session, in progress and finished"), **problem_responses(*AUTH_ERRORS)})
    async def list_sessions():
        return {"sessions": service.manager.statuses()}

    @app.get(f"{API}/sessions/{{session_id}}", tags=["sessions"], responses={200: ok(SessionStatus, "the session's status"), **problem_responses(*AUTH_ERRORS, 404, 422)})
    async def get_session(session_id: str):
        with service.manager.lock:
            return service.manager.get(session_id).status()

    @app.delete(
        f"{API}/sessions/{{session_id}}",
        tags=["sessions"],
        responses={200: ok(SessionStatus, "stopped (a finished session stays as it is): its status"), **problem_responses(*AUTH_ERRORS, 404, 422)},
    )
    async def delete_session(session_id: str):
        return await asyncio.to_thread(service.manager.delete, session_id)

    @app.post(
        f"{API}/sessions/{{session_id}}/ask",
        response_model=AskResponse,
        tags=["ask/tell"],
        responses={
            200: {"links": BATCH_LINKS},
            **problem_responses(*AUTH_ERRORS, 404, 409, 422, 503, s503="no batch ready within timeout_s (Retry-After)"),
        },
    )
    async def ask(session_id: str, timeout_s: float | None = Query(None, gt=0, le=300, description="long-poll limit, s")):
        t0 = time.perf_counter()
        limit = timeout_s if timeout_s is not None else settings.ask_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            event = asyncio.Event()
            result = service.manager.try_ask(session_id, (loop, event))
            if result is not None:
                if result.get("positions_nm"):  # the detector is listened to before the microscope learns where to go
                    await asyncio.to_thread(service.ingest.wait_listening, session_id)
                service.metrics.ask_seconds.observe(time.perf_counter() - t0)
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Problem(
                    503,
                    f"no batch ready within {limit:g} s (the previous chunk is still being reconstructed or awaits frames)",
                    kind="not-ready",
                    headers={"Retry-After": str(settings.retry_after_s)},
                )
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    @app.post(
        f"{API}/sessions/{{session_id}}/tell",
        response_model=TellResponse,
        status_code=202,
        tags=["ask/tell"],
        responses={
            202: {"description": "the batch's missing positions are bound to the series"},
            200: {"model": TellResponse, "description": "a repeat of the tell that bound the batch: nothing changed"},
            **problem_responses(*AUTH_ERRORS, 404, 409, 413, 422, 507),
        },
    )
    async def tell(session_id: str, body: TellRequest, response: Response):
        code, result = await asyncio.to_thread(service.manager.tell, session_id, body.batch_id, body.series, body.measured_positions_nm)
        response.status_code = code
        return result

    @app.get(
        f"{API}/sessions/{{session_id}}/reconstruction",
        tags=["sessions"],
        responses={
            200: ok(
                Reconstruction,
                "the latest reconstruction (a done session's converged one once it is made), by Accept: JSON (default), image/png"
                " (greyscale) or application/x-npy (float32); headers X-Reconstructions, X-Reconstruction-Kind (live or converged),"
                " X-Pixel-Nm, X-Origin-Nm",
                content={"image/png": {}, "application/x-npy": {}},
            ),
            **problem_responses(*AUTH_ERRORS, 404, 409, 422, 507),
        },
    )
    async def reconstruction(
        session_id: str,
        request: Request,
        kind: Literal["latest", "live", "converged"] = Query(
            "latest", description="latest: the converged reconstruction once a done session has one, else the live one; live: the "
            "latest chunk's (the planner's working image); converged: 409 until it is made"
        ),
    ):
        pot, origin, pixel, n, kind = await asyncio.to_thread(service.manager.reconstruction, session_id, kind)
        accept = request.headers.get("accept", "")
        headers = {"X-Reconstructions": str(n), "X-Reconstruction-Kind": kind, "X-Pixel-Nm": f"{pixel:.6g}", "X-Origin-Nm": f"{origin[0]:.6g},{origin[1]:.6g}"}
        if "image/png" in accept:  # the field of view, contrast-clipped and enlarged (headers: the view's own grid)
            fov = (await asyncio.to_thread(service.manager.get(session_id).status))["params"]["fov_nm"]
            view, v_origin, v_pixel = field_view(pot, origin, pixel, fov)
            headers |= {"X-Pixel-Nm": f"{v_pixel:.6g}", "X-Origin-Nm": f"{v_origin[0]:.6g},{v_origin[1]:.6g}"}
            return Response(await asyncio.to_thread(grey_png, view), media_type="image/png", headers=headers)
        if "application/x-npy" in accept or "application/octet-stream" in accept:
            buf = io.BytesIO()
            np.save(buf, pot.astype(np.float32))
            return Response(buf.getvalue(), media_type="application/x-npy", headers=headers)
        return {"shape": list(pot.shape), "pixel_nm": pixel, "origin_nm": list(origin), "reconstructions": n, "kind": kind, "potential": pot.tolist()}

    return app
