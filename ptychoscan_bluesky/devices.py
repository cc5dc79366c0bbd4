"""ophyd devices for the microscope side: a DECTRIS SIMPLON detector and the scan controller's beam, over their REST APIs.

``SimplonDetector`` arms, triggers and disarms a detector through SIMPLON
(``/detector/api/1.8.0``): staging arms it (one detector series; its number, the one the
stream's messages carry and the service's ``tell`` needs, becomes the ``series_id``
signal), each ``trigger`` is SIMPLON's trigger command, unstaging disarms. Its SIMPLON
config keys (``trigger_mode``, ``ntrigger``, ``nimages``, ``frame_time``, ...) are
configuration signals read and written over REST.

``ScanBeam`` is the scan controller as a movable: ``set((x, y))`` moves (parks) the beam at
(x, y) nm through the simulated microscope's scan API (``PUT /scan/api/1/park``; the
simulated detector takes each frame where the beam stands at its trigger), and its ``x`` and
``y`` signals are the position the controller reports, nm. A facility's own scan system
replaces it with any movable that takes (x, y) in nm and reads back ``<name>_x``,
``<name>_y``.

Both talk plain HTTP (httpx); each command runs in a worker thread and returns an ophyd
``DeviceStatus``, so the RunEngine's loop is not held while the detector acquires.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus, Signal, SignalRO

SIMPLON_API = "/detector/api/1.8.0"
SCAN_API = "/scan/api/1"
FRAMES_PER_TRIGGER = {"inte": 1, "exte": 1}
"""frames one trigger acquires in these trigger modes; in ``ints``/``exts`` it is ``nimages``."""


class SimplonError(RuntimeError):
    """The detector or scan controller refused a call, or could not be reached: one line naming the call and the reason."""


def rest_call(http: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    """``method path`` with a JSON ``body``; the answer's JSON (None when empty); SimplonError for an error status or no answer."""
    try:
        response = http.request(method, path, json=body)
    except httpx.HTTPError as err:
        raise SimplonError(f"{method} {http.base_url}{path}: {type(err).__name__}: {err}") from None
    if response.status_code >= 400:
        try:
            reason = response.json().get("error") or response.text
        except (ValueError, AttributeError):
            reason = response.text
        raise SimplonError(f"{method} {path}: HTTP {response.status_code}: {str(reason).strip().splitlines()[0] if reason else ''}")
    return response.json() if response.content else None


def in_thread(device: Device, work: Callable[[], None]) -> DeviceStatus:
    """Run ``work`` in a worker thread; a status that finishes when it returns (with its exception if it raises)."""
    status = DeviceStatus(device)

    def run() -> None:
        try:
            work()
        except Exception as err:
            status.set_exception(err)
        else:
            status.set_finished()

    threading.Thread(target=run, name=f"{device.name}-command", daemon=True).start()
    return status


class SimplonConfigSignal(Signal):
    """One SIMPLON config key of the parent ``SimplonDetector`` (``GET|PUT /detector/api/1.8.0/config/<key>``), read and written over REST."""

    def __init__(self, *, key: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.key = key

    def get(self, **kwargs) -> Any:
        value = rest_call(self.parent.http, "GET", f"{SIMPLON_API}/config/{self.key}")["value"]
        super().put(value, force=True)  # the cached readback and its subscribers follow the detector
        return value

    def put(self, value: Any, **kwargs) -> None:
        rest_call(self.parent.http, "PUT", f"{SIMPLON_API}/config/{self.key}", {"value": value})
        super().put(value, **kwargs)


class SimplonStateSignal(SignalRO):
    """The detector's state (``GET /detector/api/1.8.0/status/state``): idle, ready (armed), acquire, ..."""

    def get(self, **kwargs) -> str:
        return str(rest_call(self.parent.http, "GET", f"{SIMPLON_API}/status/state")["value"])


class SimplonDetector(Device):
    """A DECTRIS detector over SIMPLON at ``url`` (e.g. http://127.0.0.1:8080): stage arms, trigger triggers, unstage disarms.

    ``series_id``: the armed series' number (SIMPLON's ``sequence id``, the stream's
    ``series``); 0 before the first arm. ``last_frame``: index in that series of the last
    frame acquired (-1 right after arming). ``timeout_s``: per REST call, s (a trigger
    returns when its frames are sent, so it covers the acquisition).
    """

    series_id = Cpt(Signal, value=0, kind="hinted", doc="the armed series' number, as the stream's messages carry it")
    last_frame = Cpt(Signal, value=-1, kind="normal", doc="index of the last frame acquired in this series")
    state = Cpt(SimplonStateSignal, kind="omitted")
    trigger_mode = Cpt(SimplonConfigSignal, key="trigger_mode", kind="config")
    ntrigger = Cpt(SimplonConfigSignal, key="ntrigger", kind="config")
    nimages = Cpt(SimplonConfigSignal, key="nimages", kind="config")
    frame_time = Cpt(SimplonConfigSignal, key="frame_time", kind="config")
    count_time = Cpt(SimplonConfigSignal, key="count_time", kind="config")
    bit_depth_image = Cpt(SimplonConfigSignal, key="bit_depth_image", kind="config")

    def __init__(self, url: str, *, name: str, timeout_s: float = 120.0, **kwargs) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout_s)
        self.armed = False
        self.frames_per_trigger = 1
        super().__init__("", name=name, **kwargs)

    def stage(self) -> list[Device]:
        """Apply ``stage_sigs``, then arm: one new series, whose number goes to ``series_id``."""
        staged = super().stage()
        try:
            series = int(rest_call(self.http, "PUT", f"{SIMPLON_API}/command/arm")["sequence id"])
        except Exception:
            super().unstage()
            raise
        self.armed = True
        self.frames_per_trigger = self.frames_of_one_trigger()
        self.series_id.put(series)
        self.last_frame.put(-1)
        return staged

    def trigger(self) -> DeviceStatus:
        """SIMPLON's trigger command (internal trigger modes); done when the trigger's frames are acquired."""
        frames = self.frames_per_trigger if self.armed else self.frames_of_one_trigger()

        def work() -> None:
            rest_call(self.http, "PUT", f"{SIMPLON_API}/command/trigger")
            self.last_frame.put(self.last_frame.get() + frames)

        return in_thread(self, work)

    def frames_of_one_trigger(self) -> int:
        """Frames one trigger acquires with the detector's config now: 1 (inte, exte) or nimages (ints, exts)."""
        per_trigger = FRAMES_PER_TRIGGER.get(str(self.trigger_mode.get()))
        return per_trigger if per_trigger is not None else int(self.nimages.get())

    def unstage(self) -> list[Device]:
        """Disarm (ends the series: the stream's series end), then restore ``stage_sigs``."""
        if self.armed:
            self.armed = False
            rest_call(self.http, "PUT", f"{SIMPLON_API}/command/disarm")
        return super().unstage()

    def stop(self, *, success: bool = False) -> None:
        if self.armed:
            self.armed = False
            rest_call(self.http, "PUT", f"{SIMPLON_API}/command/abort")
        super().stop(success=success)

    def close(self) -> None:
        self.http.close()


class ScanBeam(Device):
    """The scan controller's beam at ``url`` as a movable: ``set((x, y))`` parks the beam at (x, y) nm; ``x``, ``y`` read back, nm."""

    x = Cpt(Signal, value=0.0, kind="hinted", doc="beam x as the scan controller reports it, nm")
    y = Cpt(Signal, value=0.0, kind="hinted", doc="beam y as the scan controller reports it, nm")

    def __init__(self, url: str, *, name: str, timeout_s: float = 30.0, **kwargs) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout_s)
        super().__init__("", name=name, **kwargs)

    @property
    def position(self) -> tuple[float, float]:
        """(x, y) nm, the last reported position."""
        return (float(self.x.get()), float(self.y.get()))

    def set(self, value, **kwargs) -> DeviceStatus:
        """Move the beam to ``value`` = (x, y) nm; done when the scan controller reports it there."""
        try:
            x, y = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: a beam position is (x, y) in nm, got {value!r}") from None

        def work() -> None:
            where = rest_call(self.http, "PUT", f"{SCAN_API}/park", {"position_nm": [x, y]})["position_nm"]
            self.x.put(float(where[0]))
            self.y.put(float(where[1]))

        return in_thread(self, work)

    def close(self) -> None:
        self.http.close()
