"""DECTRIS SIMPLON stream v1 over ZeroMQ: the detector side of ptychoscan, shared by the service and the simulator.

A series is a global header message (``dheader-1.0`` then, unless ``header_detail``
is ``none``, the detector config JSON; ``all`` adds flatfield, pixel mask and
count-rate parts, JSON + blob each), one four-part message per image (``dimage-1.0``,
``dimage_d-1.0``, the blob, ``dconfig-1.0``; an optional appendix may follow) and a
one-part ``dseries_end-1.0``.

Modules, one job each (import from them; this package file re-exports nothing):

- ``errors``: ``StreamErrorKind`` (what went wrong, set where it is found) and ``CodecError``.
- ``bslz4``: the bitshuffle-LZ4 framing (12-byte header, length-prefixed blocks), checked before any C code sees it.
- ``codec``: frame encodings (``bs8/16/32-lz4<``, ``lz4<``, ``<``): ``encode_frame(s)``, ``decode_frame(s)``, ``decode_batch``.
- ``messages``: building the multipart messages of a series; ``expected_frames``.
- ``events``: what a decoder returns: ``SeriesStart``, ``Frame`` (or, asked for, ``FrameRun``: consecutive frames as one array), ``SeriesEnd``, ``StreamError``.
- ``decoder``: ``StreamDecoder``, messages of one connection to events; never raises on input.
- ``endpoints``: the ``tcp://host:port`` / ``ipc://path`` check.
- ``codec_threads``: OpenMP threads of bitshuffle, per calling thread.
- ``receiver``: ``StreamReceiver``, PULL sockets to detectors served by one thread.
"""
