"""HDF5 filters the project's files may use, registered with h5py on import.

Session files keep ``patterns`` compressed with bitshuffle-LZ4 (``service.pattern_chunks``),
HDF5 filter 32008 as in DECTRIS's own files. h5py reads and writes it only once bitshuffle's
filter is registered, which importing this module does (``bitshuffle.h5``); every module that
opens a session file imports it. Other readers: ``import hdf5plugin`` (Python), or
bitshuffle's plugin on ``HDF5_PLUGIN_PATH`` (h5dump, Fiji, MATLAB).
"""

from __future__ import annotations

import bitshuffle.h5

BSLZ4_FILTER = int(bitshuffle.h5.H5FILTER)
"""HDF5 filter id of bitshuffle (32008)."""
BSLZ4_OPTIONS = (0, int(bitshuffle.h5.H5_COMPRESS_LZ4))
"""The filter's options: block size 0 (its default, 8192 bytes), then LZ4 compression."""
