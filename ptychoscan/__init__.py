"""ptychoscan: adaptive scanning for electron ptychography (Schloz et al., Sci. Rep. 2023).

This package holds the command-line entry point that composes ``recon``, ``policy``,
``service`` and ``sim_microscope``.
"""

__version__ = "0.1.0"
