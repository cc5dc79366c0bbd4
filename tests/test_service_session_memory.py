"""A session's frame memory: the file's pixel type in memory, float32 only in a reconstruction, and what its limit counts."""

from __future__ import annotations

import numpy as np
from service_testing import session_body

from service.detector_mask import fitted
from service.spec import SessionSpec


def _spec(bit_depth: int) -> SessionSpec:
    body = session_body("tcp://127.0.0.1:1", budget=1000, chunk=100) | {
        "energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0, "detector_pixels": 64, "detector_bit_depth": bit_depth,
    }
    return SessionSpec.from_params(body)


def test_the_memory_limit_counts_the_float32_frames_a_reconstruction_holds_whatever_the_pixel_type():
    """16-bit sessions keep uint16 frames, but a reconstruction of all of them holds float32 copies: that peak is what is limited."""
    need = 1000 * 64 * 64 * 4
    for bits in (16, 32):
        assert _spec(bits).size_error(10**9, need) is None
        assert "GiB of frames" in _spec(bits).size_error(10**9, need - 1)


def test_a_wider_frame_is_clipped_to_the_session_type_as_in_the_file():
    """Only marks exceed the session's type in an admitted frame; clipped, a wider type's mark is the narrower type's, never a
    wrapped count (70000 would wrap to 4464 in a plain cast)."""
    wide = np.array([[5, 70000], [0xFFFFFFFF, 65535]], np.uint32)
    assert fitted(wide, np.dtype(np.uint16)).tolist() == [[5, 65535], [65535, 65535]]
    same = np.array([[1, 2]], np.uint16)
    assert fitted(same, np.dtype(np.uint16)) is same and fitted(same, np.dtype(np.uint32)) is same
