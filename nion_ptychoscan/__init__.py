"""Nion Swift drives an adaptive ptychoscan session (issue 20).

The driver (``nion_ptychoscan.driver``) creates a session on the ptychoscan service,
asks for probe positions chunk by chunk, parks Nion's probe at each one (spot mode,
``nion.instrumentation`` STEM controller + scan hardware source), grabs one camera frame
per position, publishes the frames to the service as a DECTRIS stream v1 detector would
(``nion_ptychoscan.stream_publisher``), tells the service which series holds them, and
repeats until the session is done. ``nion_ptychoscan.usim_stack`` starts Nion's
microscope simulator (nionswift-usim) without a display; ``nionswift_plugin/ptychoscan_adaptive``
is the Nion Swift menu hook. The service is reached through ``ptychoscan.client`` (which brings
only the REST models, ``service.models`` and ``service.responses``: pydantic); nothing here
imports ``sim_microscope``, torch or the service's app.

The Nion packages are an optional extra (``pip install -e '.[nion]'``); only
``usim_stack``, ``spot_acquisition`` and the plug-in import them.
"""
