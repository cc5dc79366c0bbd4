"""Nion's instrumentation without Nion Swift's UI: the hardware-source registry, and nionswift-usim's simulated microscope.

Inside Nion Swift the instrumentation plug-in (``nionswift_plugin.nion_instrumentation_ui``)
has already run ``HardwareSource.run()``, ``camera_base.run(...)`` and ``scan_base.run(...)``,
whose registry listeners turn each registered ``scan_module`` / ``camera_module`` into a
scan / camera hardware source; ``hardware_from_registry`` then finds the STEM controller
(registry type ``stem_controller``), its primary scan hardware source
(``stem_controller.scan_controller``) and its ronchigram camera
(``stem_controller.ronchigram_camera``). Headless, ``UsimStack`` does the same set-up
itself and registers usim's instrument, scan module and cameras
(``nion.usim_device.DeviceConfiguration.AcquisitionContextConfiguration``, as the
``nionswift_plugin.usim`` plug-in does), then tears it all down on exit.
"""

from __future__ import annotations

import pathlib
import tempfile
from dataclasses import dataclass
from typing import Any


class NionHardwareError(RuntimeError):
    """No STEM controller, scan device or camera is registered; one line saying which."""


@dataclass(frozen=True)
class NionHardware:
    """The three Nion objects the driver uses (typed ``Any``: the Nion packages are optional)."""

    stem_controller: Any
    """``nion.instrumentation.stem_controller.STEMController``: probe position and state, scan context."""
    scan: Any
    """``scan_base.ScanHardwareSource``: the scan frame parameters (field of view) and the probe position setter."""
    camera: Any
    """``camera_base.CameraHardwareSource``: the camera whose frames become the detector's."""


def hardware_from_registry(camera_id: str | None = None) -> NionHardware:
    """The registered STEM controller, its scan hardware source, and the camera ``camera_id`` (default: its ronchigram camera)."""
    from nion.instrumentation import HardwareSource
    from nion.utils import Registry

    stem = Registry.get_component("stem_controller")
    if stem is None:
        raise NionHardwareError("no STEM controller is registered (is a microscope or nionswift-usim plug-in loaded?)")
    scan = stem.scan_controller
    if scan is None:
        raise NionHardwareError("the STEM controller has no scan hardware source")
    if camera_id:
        camera = HardwareSource.HardwareSourceManager().get_hardware_source_for_hardware_source_id(camera_id)
    else:
        camera = stem.ronchigram_camera
    if camera is None:
        raise NionHardwareError(f"no camera {camera_id or '(ronchigram)'} is registered")
    return NionHardware(stem, scan, camera)


class UsimStack:
    """Context manager: nionswift-usim's microscope, headless; ``hardware`` while inside. One per process at a time."""

    def __init__(self, sample_index: int = 0) -> None:
        self.sample_index = sample_index
        self.hardware: NionHardware | None = None
        self._config: Any = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> NionHardware:
        from nion.instrumentation import HardwareSource, camera_base, scan_base
        from nion.usim_device import DeviceConfiguration

        self._tmp = tempfile.TemporaryDirectory(prefix="nion-usim-")
        location = pathlib.Path(self._tmp.name)  # camera/scan settings files land here, not in the user's profile
        HardwareSource.run()
        camera_base.run(location)
        scan_base.run(location)
        self._config = DeviceConfiguration.AcquisitionContextConfiguration(sample_index=self.sample_index, set_configuration_location=False)
        self._config.run()
        self.hardware = hardware_from_registry()
        return self.hardware

    def __exit__(self, *exc) -> None:
        from nion.instrumentation import HardwareSource, camera_base, scan_base

        if self.hardware is not None:
            for source in (self.hardware.camera, self.hardware.scan):
                if source.is_playing:
                    source.abort_playing(sync_timeout=10.0)
        if self._config is not None:
            self._config.stop()
        scan_base.stop()
        camera_base.stop()
        HardwareSource.stop()
        HardwareSource.HardwareSourceManager().close()
        if self._tmp is not None:
            self._tmp.cleanup()
        self.hardware = None
