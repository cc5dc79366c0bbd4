"""The acquisition plan that keeps the service's order, and the evaluation function that turns its result into outcomes.

The service binds frame i of a told detector series to position i of the batch. Plans
of bluesky-adaptive (``default_acquire``, ``list_scan_in_run``) route a batch's points by
shortest path first, so frame i would be taken at some other position and filed at
position i: silently wrong data. ``acquire_in_service_order`` visits the suggestions in
the order given, in one detector series: it sets the detector to one frame per trigger
(``inte``, ``ntrigger`` = points), arms it (stage), and for each point moves the beam
there and triggers and reads detector and beam; it returns an ``Acquisition`` (the
series, the suggestion ids in frame order, the beam's readback per frame).
``evaluate_acquisition`` makes one outcome per frame and refuses an acquisition that
is not one (say ``default_acquire``'s run uid) or whose frames are out of the
suggestions' order.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from ptychoscan_bluesky.devices import ScanBeam, SimplonDetector

ID_KEY = "_id"
"""bluesky-adaptive's suggestion id key."""
X_KEY, Y_KEY = "x_nm", "y_nm"
"""a suggestion's beam position, nm."""
RUN_KEY = "ptychoscan_acquire"
"""the run key of ``acquire_in_service_order``'s runs (one per batch, opened inside ``optimize``'s run)."""


class OrderError(ValueError):
    """Frames were not taken in the service's order (frame i must be at the batch's position i)."""


@dataclass(frozen=True)
class Acquisition:
    """One batch acquired in one detector series: ``ids[i]`` is the suggestion frame i was taken at; ``measured_nm[i]`` where the beam was, nm."""

    series: int
    ids: tuple[Hashable, ...]
    measured_nm: tuple[tuple[float, float], ...]


def find_devices(actuators: Sequence[Any], sensors: Sequence[Any] | None) -> tuple[ScanBeam, SimplonDetector, list[Any]]:
    """(the beam, the detector, the other sensors) among an optimization problem's actuators and sensors; ValueError if one is missing."""
    beams = [a for a in actuators if isinstance(a, ScanBeam)]
    detectors = [s for s in sensors or () if isinstance(s, SimplonDetector)]
    if len(beams) != 1 or len(detectors) != 1:
        raise ValueError(f"acquire_in_service_order needs one ScanBeam actuator and one SimplonDetector sensor, got {len(beams)} and {len(detectors)}")
    return beams[0], detectors[0], [s for s in sensors or () if s is not detectors[0]]


def acquisition_steps(suggestions: Sequence[Mapping], beam: ScanBeam, detector: SimplonDetector, others: Sequence[Any]) -> MsgGenerator[Acquisition]:
    """The batch as one series (no run of its own): configure, arm, and per suggestion in order move, trigger and read; disarm."""
    if not suggestions:
        raise ValueError("no suggestions to acquire")
    yield from bps.mv(detector.trigger_mode, "inte", detector.ntrigger, len(suggestions), detector.nimages, 1)

    @bpp.stage_decorator([detector])
    def series() -> MsgGenerator[Acquisition]:
        ids, measured = [], []
        for suggestion in suggestions:
            yield from bps.mv(beam, (suggestion[X_KEY], suggestion[Y_KEY]))
            reading = yield from bps.trigger_and_read([detector, beam, *others])
            ids.append(suggestion[ID_KEY])
            measured.append((float(reading[beam.x.name]["value"]), float(reading[beam.y.name]["value"])))
        return Acquisition(int(detector.series_id.get()), tuple(ids), tuple(measured))

    return (yield from series())


def acquire_in_service_order(
    suggestions: Sequence[Mapping], actuators: Sequence[Any], sensors: Sequence[Any] | None = None, md: Mapping[str, Any] | None = None, **kwargs: Any
) -> MsgGenerator[Acquisition]:
    """bluesky-adaptive's acquisition plan (for ``optimize``): the suggestions in their order, in a run of their own; an ``Acquisition``."""
    beam, detector, others = find_devices(actuators, sensors)
    run_md = {"plan_name": "acquire_in_service_order", "suggestion_ids": [str(s[ID_KEY]) for s in suggestions], **(md or {})}

    result: list[Acquisition] = []  # run_wrapper returns the run's uid, not the plan's value

    @bpp.set_run_key_decorator(RUN_KEY)  # a run of its own beside optimize's (bluesky's run keys)
    @bpp.run_decorator(md=run_md)
    def run() -> MsgGenerator[None]:
        result.append((yield from acquisition_steps(suggestions, beam, detector, others)))

    yield from run()
    return result[0]


def acquire_in_service_order_in_run(
    suggestions: Sequence[Mapping], actuators: Sequence[Any], sensors: Sequence[Any] | None = None, **kwargs: Any
) -> MsgGenerator[Acquisition]:
    """The same inside a run that is open already (for bluesky-adaptive's ``optimize_in_run``)."""
    beam, detector, others = find_devices(actuators, sensors)
    return (yield from acquisition_steps(suggestions, beam, detector, others))


def evaluate_acquisition(uid: Any, suggestions: Sequence[Mapping]) -> list[dict]:
    """bluesky-adaptive's evaluation function: per suggestion, its frame in the series and where the beam was.

    Outcome keys: ``_id``, ``series``, ``frame``, ``x_measured_nm``, ``y_measured_nm``.
    OrderError if frame i was not taken at suggestion i (a plan that reorders), TypeError
    if ``uid`` is not an ``Acquisition``.
    """
    if not isinstance(uid, Acquisition):
        raise TypeError(
            f"evaluate_acquisition needs the Acquisition that acquire_in_service_order returns, got {type(uid).__name__}: bluesky-adaptive's "
            "default plans reorder points by shortest path, while the service files frame i at position i"
        )
    expected = [s[ID_KEY] for s in suggestions]
    if list(uid.ids) != expected:
        first = next((i for i, (a, b) in enumerate(zip(uid.ids, expected, strict=False)) if a != b), min(len(uid.ids), len(expected)))
        raise OrderError(
            f"series {uid.series} is out of the service's order: frame {first} was taken at suggestion "
            f"{uid.ids[first] if first < len(uid.ids) else None!r}, the service files it at {expected[first] if first < len(expected) else None!r}"
        )
    return [
        {ID_KEY: sid, "series": uid.series, "frame": i, "x_measured_nm": x, "y_measured_nm": y}
        for i, (sid, (x, y)) in enumerate(zip(uid.ids, uid.measured_nm, strict=True))
    ]
