"""Forward model and batched gradient reconstructor for electron ptychography.

``recon`` imports nothing from ``policy`` or ``service``.
"""
