"""The ptychoscan service as a bluesky-adaptive 1.0 optimizer: it suggests the service's next batch and tells it what was measured.

bluesky-adaptive 1.0 drives an experiment through an ``Optimizer`` (``suggest`` points,
``ingest`` outcomes) inside its ``optimize`` plan. ``PtychoscanAgent`` is one backed by a
service session: ``suggest`` asks the service (long-polling while it reconstructs) and
returns the batch's positions in the service's order, one suggestion per position
(``_id`` ``"<batch>:<i>"``, ``x_nm``, ``y_nm``); ``ingest`` takes the outcomes of
``plans.evaluate_acquisition`` (the detector series and each point's frame index) and
tells the service which series holds the batch, with the beam's readback as the
measured positions. The service decides how many points a batch has (the session's
``chunk``), whatever ``num_points`` asks for. ``should_stop`` asks for the next batch and
stops once the service says the session is done; ``register_failures`` abandons a
batch whose acquisition failed (the service issues its positions again).

``problem(beam, detector)`` puts the agent, the devices, ``acquire_in_service_order`` and
``evaluate_acquisition`` into bluesky-adaptive's ``OptimizationProblem``;
``RE(optimize(agent.problem(beam, detector), iterations=None))`` runs the session to done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bluesky_adaptive.protocols import OptimizationProblem

from ptychoscan.client import AskResponse, Client, SessionCreate
from ptychoscan_bluesky.devices import ScanBeam, SimplonDetector
from ptychoscan_bluesky.plans import ID_KEY, X_KEY, Y_KEY, OrderError, acquire_in_service_order, evaluate_acquisition


class PtychoscanAgent:
    """A bluesky-adaptive ``Optimizer`` (with stopping criteria and failure handling) for one session of the service.

    ``client``: a ``ptychoscan.client.Client`` of the service; ``session_id``: the session
    (``PtychoscanAgent.start`` creates one). ``poll_s``: the long-poll of each ask, s (None: the
    service's default); ``wait_s``: how long one ask may wait in all (None: the client's
    ``ask_wait_s``), s.
    """

    def __init__(self, client: Client, session_id: str, *, poll_s: float | None = None, wait_s: float | None = None) -> None:
        self.client = client
        self.session_id = session_id
        self.poll_s, self.wait_s = poll_s, wait_s
        self.batch: AskResponse | None = None
        """the batch suggested and not yet told (or asked for by should_stop and not yet suggested)."""
        self.suggested = False
        self.done = False
        self.told: list[tuple[int, int]] = []
        """(batch_id, series) of every batch told, in order."""

    @classmethod
    def start(cls, client: Client, body: SessionCreate | dict, **kwargs: Any) -> PtychoscanAgent:
        """Create a session (``body``: the service's ``SessionCreate``) and an agent for it."""
        return cls(client, client.create_session(body).session_id, **kwargs)

    # --- bluesky-adaptive's Optimizer ------------------------------------------------------------

    def suggest(self, num_points: int | None = None) -> list[dict]:
        """The service's next batch, in its order (``num_points`` is not used: the session's chunk sets the size).

        RuntimeError if the session is done (nothing left to measure).
        """
        batch = self._next_batch()
        if batch is None:
            raise RuntimeError(f"session {self.session_id} is done: there is nothing left to suggest")
        self.suggested = True
        return [{ID_KEY: f"{batch.batch_id}:{i}", X_KEY: float(x), Y_KEY: float(y)} for i, (x, y) in enumerate(batch.positions_nm)]

    def ingest(self, points: Sequence[Mapping]) -> None:
        """Tell the service which detector series holds the suggested batch (outcomes of ``evaluate_acquisition``, one per position).

        OrderError if the outcomes are not exactly the batch's positions with frame i at
        position i (the service files frame i at position i), ValueError if they name
        more than one series.
        """
        batch = self.batch
        if batch is None or not self.suggested:
            raise ValueError(f"session {self.session_id}: outcomes ingested with no batch suggested")
        by_id = {str(p[ID_KEY]): p for p in points}
        expected = [f"{batch.batch_id}:{i}" for i in range(len(batch.positions_nm))]
        if sorted(by_id) != sorted(expected):
            raise OrderError(f"batch {batch.batch_id}: outcomes for {sorted(by_id)} but the batch's suggestions are {expected}")
        frames = [int(by_id[i]["frame"]) for i in expected]
        if frames != list(range(len(expected))):
            raise OrderError(f"batch {batch.batch_id}: its positions were measured as frames {frames}; the service files frame i at position i")
        series = {int(by_id[i]["series"]) for i in expected}
        if len(series) != 1:
            raise ValueError(f"batch {batch.batch_id}: outcomes name the series {sorted(series)}; a batch is one detector series")
        measured = None
        if all("x_measured_nm" in by_id[i] and "y_measured_nm" in by_id[i] for i in expected):
            measured = [[float(by_id[i]["x_measured_nm"]), float(by_id[i]["y_measured_nm"])] for i in expected]
        (number,) = series
        self.client.tell(self.session_id, batch.batch_id, number, measured)
        self.told.append((batch.batch_id, number))
        self.batch, self.suggested = None, False

    def get_best_points(self) -> list[tuple[Any, Mapping, Mapping]]:
        """Nothing is optimised point by point here: the session's result is its reconstruction (``client.reconstruction``)."""
        return []

    # --- SupportsStoppingCriteria, TrialFaultAware -----------------------------------------------

    def should_stop(self) -> tuple[bool, str | None]:
        """Ask for the next batch (kept for ``suggest``); stop when the service says the session is done."""
        if self._next_batch() is None:
            return True, f"session {self.session_id} is done"
        return False, None

    def register_failures(self, suggestions: Sequence[Mapping]) -> None:
        """The acquisition of the suggested batch failed: abandon it (the service issues its positions again at the next ask)."""
        if self.batch is not None and self.suggested:
            self.client.abandon(self.session_id, self.batch.batch_id)
            self.batch, self.suggested = None, False

    # --- helpers ---------------------------------------------------------------------------------

    def _next_batch(self) -> AskResponse | None:
        """The batch to suggest (asked once, kept until told); None when the session is done."""
        if self.done:
            return None
        if self.batch is None:
            batch = self.client.ask(self.session_id, poll_s=self.poll_s, wait_s=self.wait_s)
            if batch.done:
                self.done = True
                return None
            if not batch.positions_nm:
                raise RuntimeError(f"session {self.session_id}: batch {batch.batch_id} has no positions and the session is not done")
            self.batch, self.suggested = batch, False
        return self.batch

    def problem(self, beam: ScanBeam, detector: SimplonDetector, *, sensors: Sequence[Any] = ()) -> OptimizationProblem:
        """bluesky-adaptive's problem: this agent, the beam, the detector (plus ``sensors`` read at every point), in the service's order."""
        return OptimizationProblem(
            optimizer=self,
            actuators=[beam],
            sensors=[detector, *sensors],
            evaluation_function=evaluate_acquisition,
            acquisition_plan=acquire_in_service_order,
        )


def session_plan(agent: PtychoscanAgent, beam: ScanBeam, detector: SimplonDetector, **kwargs: Any):
    """bluesky-adaptive's ``optimize`` over ``agent.problem(beam, detector)`` until the service says done (one run per batch inside it)."""
    from bluesky_adaptive.plans import optimize

    return (yield from optimize(agent.problem(beam, detector), iterations=None, **kwargs))
