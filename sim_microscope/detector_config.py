"""The simulated detector's config: its SIMPLON keys with their defaults, types, ranges and units, as a DCU describes them."""

from __future__ import annotations

from sim_microscope.scan_controller import DetectorError

TRIGGER_MODES = ("exte", "exts", "inte", "ints")
COMPRESSIONS = {"bslz4": None, "lz4": "lz4<", "none": "<"}

def default_config(detector_pixels: int) -> dict:
    """The detector config (SIMPLON key names and units: seconds, pixels)."""
    return {
        "count_time": 0.001,
        "frame_time": 0.001,
        "nimages": 1,
        "ntrigger": 1,
        "trigger_mode": "ints",
        "bit_depth_image": 16,
        "bit_depth_readout": 16,
        "compression": "bslz4",
        "x_pixels_in_detector": detector_pixels,
        "y_pixels_in_detector": detector_pixels,
        "x_pixel_size": 7.5e-5,
        "y_pixel_size": 7.5e-5,
        "software_version": "1.8.0",
        "description": "ptychoscan simulated DECTRIS detector",
        "detector_number": "SIM-0001",
        "sensor_material": "Si",
        "sensor_thickness": 4.5e-4,
        "countrate_correction_applied": False,
        "flatfield_correction_applied": False,
        "pixel_mask_applied": False,
        "mask_to_zero": False,
        "roi_mode": "disabled",
        "threshold_energy": 4020.0,
        "photon_energy": 8041.0,
        "nexpi": 1,
        "countrate_correction_count_cutoff": 65535,
    }


_CONFIG_RULES = {
    "count_time": (float, 1e-7, 3600.0),
    "frame_time": (float, 0.0, 3600.0),
    "nimages": (int, 1, 10_000_000),
    "ntrigger": (int, 1, 10_000_000),
    "trigger_mode": (str, TRIGGER_MODES, None),
    "bit_depth_image": (int, (8, 16, 32), None),
    "compression": (str, tuple(COMPRESSIONS), None),
    "threshold_energy": (float, 0.0, 1e6),
    "photon_energy": (float, 0.0, 1e6),
    "nexpi": (int, 1, 1_000_000),
    "pixel_mask_applied": (bool, (True, False), None),
    "countrate_correction_applied": (bool, (True, False), None),
    "flatfield_correction_applied": (bool, (True, False), None),
    "mask_to_zero": (bool, (True, False), None),
    "roi_mode": (str, ("disabled",), None),
}
READ_ONLY = ("x_pixels_in_detector", "y_pixels_in_detector", "software_version", "description", "detector_number")


def check_config_value(key: str, value):
    """``value`` as the type of config ``key``; DetectorError (400) for an unknown or read-only key or a value out of its range."""
    if key not in _CONFIG_RULES:
        what = "read-only" if key in READ_ONLY or key in default_config(1) else "unknown"
        raise DetectorError(f"config key {key!r} is {what}", 400)
    kind, low, high = _CONFIG_RULES[key]
    if kind is bool and not isinstance(value, bool):  # bool("false") is True: take JSON true/false only
        raise DetectorError(f"{key} must be true or false, got {value!r}", 400)
    try:
        v = kind(value)
    except (TypeError, ValueError):
        raise DetectorError(f"{key} must be {kind.__name__}, got {value!r}", 400) from None
    if isinstance(low, tuple):
        if v not in low:
            raise DetectorError(f"{key} must be one of {list(low)}, got {value!r}", 400)
    elif not (low <= v <= high):
        raise DetectorError(f"{key} must be within {low}..{high}, got {value!r}", 400)
    return v


def config_description(key: str, value) -> dict:
    """SIMPLON-style description of a config value."""
    kind = {bool: "bool", int: "uint", float: "float", str: "string"}.get(type(value), "string")
    desc = {"value": value, "value_type": kind, "access_mode": "rw" if key in _CONFIG_RULES else "r"}
    rule = _CONFIG_RULES.get(key)
    if rule and rule[0] is not bool and isinstance(rule[1], tuple):  # a DCU lists no allowed_values for a bool: clients take one as an enum
        desc["allowed_values"] = list(rule[1])
    elif rule and rule[0] is not bool:
        desc["min"], desc["max"] = rule[1], rule[2]
    if key in UNITS:
        desc["unit"] = UNITS[key]
    return desc


UNITS = {"count_time": "s", "frame_time": "s", "threshold_energy": "eV", "photon_energy": "eV", "x_pixel_size": "m", "y_pixel_size": "m",
         "sensor_thickness": "m"}
"""SI units of the config keys that have one (as a DCU describes them)."""
