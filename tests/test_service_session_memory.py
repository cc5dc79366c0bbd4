"""A session's frame memory is sized by the session file's pixel type (what it holds), not by float32."""

from __future__ import annotations

from service_testing import session_body

from service.spec import SessionSpec


def _spec(bit_depth: int) -> SessionSpec:
    body = session_body("tcp://127.0.0.1:1", budget=1000, chunk=100) | {
        "energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0, "detector_pixels": 64, "detector_bit_depth": bit_depth,
    }
    return SessionSpec.from_params(body)


def test_a_16_bit_detector_session_needs_half_the_memory_of_a_32_bit_one():
    need16, need32 = 1000 * 64 * 64 * 2, 1000 * 64 * 64 * 4
    assert _spec(16).size_error(10**9, need16) is None
    assert "GiB of frames" in _spec(16).size_error(10**9, need16 - 1)
    assert _spec(32).size_error(10**9, need32) is None
    assert "GiB of frames" in _spec(32).size_error(10**9, need16)
