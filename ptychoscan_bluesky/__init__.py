"""bluesky, ophyd and bluesky-adaptive for the ptychoscan service (the ``bluesky`` extra: ``pip install 'ptychoscan[bluesky]'``).

- ``SimplonDetector``, ``ScanBeam`` (``devices``): ophyd devices for a DECTRIS SIMPLON
  detector (stage arms, the series id is a signal) and the scan controller's beam.
- ``PtychoscanAgent`` (``agent``): a bluesky-adaptive optimizer backed by a service session.
- ``acquire_in_service_order``, ``evaluate_acquisition`` (``plans``): the acquisition plan
  that keeps the service's order (frame i at position i) and its evaluation function.
- ``session_plan``: ``optimize`` until the service says done.

The core package (``ptychoscan``, ``service``, ...) never imports this one.
"""

try:
    import bluesky  # noqa: F401
    import bluesky_adaptive  # noqa: F401
    import ophyd  # noqa: F401
except ImportError as err:  # one clear line instead of an import error deep in a module
    raise ImportError(f"ptychoscan_bluesky needs bluesky, ophyd and bluesky-adaptive ({err.name} is missing): pip install 'ptychoscan[bluesky]'", name=err.name) from err

from ptychoscan_bluesky.agent import PtychoscanAgent, session_plan
from ptychoscan_bluesky.devices import ScanBeam, SimplonDetector, SimplonError
from ptychoscan_bluesky.plans import (
    Acquisition,
    OrderError,
    acquire_in_service_order,
    acquire_in_service_order_in_run,
    evaluate_acquisition,
)

__all__ = [
    "Acquisition",
    "OrderError",
    "PtychoscanAgent",
    "ScanBeam",
    "SimplonDetector",
    "SimplonError",
    "acquire_in_service_order",
    "acquire_in_service_order_in_run",
    "evaluate_acquisition",
    "session_plan",
]
