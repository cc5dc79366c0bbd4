"""Simulated microscope: specimens, 4D-STEM simulation, dataset files, detector and scan stand-ins.

Only tests, training/evaluation environments and the CLI import this package.
"""

from sim_microscope.simulate import SimulationResult, simulate_patterns, simulate_scan
from sim_microscope.specimens import SpecimenConfig, build_specimen, double_walled_nanotube, tmd_monolayer

__all__ = [
    "SimulationResult",
    "SpecimenConfig",
    "build_specimen",
    "double_walled_nanotube",
    "simulate_patterns",
    "simulate_scan",
    "tmd_monolayer",
]
