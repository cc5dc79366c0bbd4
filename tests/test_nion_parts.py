"""The Nion driver's parts that need no Nion package: field mapping, camera frame -> counts, the stream v1 publisher."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from detector_stream.decoder import StreamDecoder
from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from nion_ptychoscan.counts import FrameShapeError, bin_to, to_counts
from nion_ptychoscan.geometry import FieldError, ScanField, scan_side_nm
from nion_ptychoscan.stream_publisher import PublishError, StreamPublisher


def test_session_positions_map_to_scan_fractions_and_back():
    field = ScanField((1.0, 2.0, 2.0, 1.0), (2.0, 2.0))  # a 2 x 1 nm field in a 2 x 2 nm scan, centred
    p = np.array([[1.0, 2.0], [3.0, 3.0], [2.0, 2.5]])
    f = field.to_fractions(p)
    np.testing.assert_allclose(f, [[0.0, 0.25], [1.0, 0.75], [0.5, 0.5]])
    np.testing.assert_allclose(field.to_nm(f), p)
    assert scan_side_nm((0, 0, 2.0, 1.0)) == 2.0 and scan_side_nm((0, 0, 1.0, 3.0), 0.1) == pytest.approx(3.3)


def test_a_position_outside_the_scan_is_refused_with_its_index():
    field = ScanField((0.0, 0.0, 1.0, 1.0), (1.0, 1.0))
    with pytest.raises(FieldError, match="position 1"):
        field.to_fractions([[0.5, 0.5], [1.2, 0.5]])


def test_camera_frames_are_block_summed_rounded_and_clipped_to_the_pixel_type():
    frame = np.arange(16, dtype=np.float32).reshape(4, 4) + 0.4
    np.testing.assert_allclose(bin_to(frame, 2), [[11.6, 19.6], [43.6, 51.6]], rtol=1e-6)
    np.testing.assert_array_equal(to_counts(frame, 2, "uint32"), [[12, 20], [44, 52]])
    big = np.full((2, 2), 1e6, np.float32)
    big[0, 0], big[0, 1] = -5.0, np.nan
    c = to_counts(big, 2, "uint16")
    assert c.dtype == np.uint16 and c.tolist() == [[0, 0], [65535, 65535]]
    with pytest.raises(FrameShapeError, match="multiples of 3"):
        to_counts(frame, 3)


def test_the_publisher_sends_a_series_the_services_decoder_reads_frame_for_frame():
    images = np.random.default_rng(0).integers(0, 2**20, size=(3, 64, 64)).astype(np.uint32)
    with StreamPublisher(port=0) as pub:
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.connect(pub.endpoint)
        try:
            first, second = pub.publish(images, frame_time_s=0.001), pub.publish(images[:1])
            decoder = StreamDecoder()
            events = []
            while not any(isinstance(e, SeriesEnd) and e.series == second for e in events):
                assert pull.poll(5000), "publisher sent nothing"
                events += decoder.feed(pull.recv_multipart())
        finally:
            pull.close(0)
            ctx.term()
    assert (first, second) == (1, 2)
    assert not [e for e in events if isinstance(e, StreamError)]
    starts = [e for e in events if isinstance(e, SeriesStart)]
    assert [s.series for s in starts] == [1, 2] and starts[0].config["nimages"] == 3 and starts[0].config["bit_depth_image"] == 32
    frames = [e for e in events if isinstance(e, Frame) and e.series == 1]
    assert [f.frame for f in frames] == [0, 1, 2]
    for f, image in zip(frames, images, strict=True):
        np.testing.assert_array_equal(f.image, image)


def test_the_publisher_gives_up_when_no_receiver_connects():
    with StreamPublisher(port=0, send_timeout_s=0.2) as pub, pytest.raises(PublishError, match="no receiver"):
        pub.publish(np.zeros((1, 8, 8), np.uint16))


class _Stem:
    probe_state = "parked"
    probe_position = None


class _Scan:
    def __init__(self, stem):
        self.stem = stem

    @property
    def probe_position(self):
        return self.stem.probe_position

    @probe_position.setter
    def probe_position(self, value):
        self.stem.probe_position = value


class _ReusingCamera:
    """A camera that hands out the same array each grab and overwrites it with the next frame (as Nion's buffers may)."""

    hardware_source_id = "fake"

    def __init__(self):
        self.buffer = np.zeros((4, 4), np.float32)
        self.grabs = 0

    def grab_next_to_start(self, **kw):
        self.grabs += 1
        self.buffer[...] = self.grabs
        return [type("XData", (), {"data": self.buffer})()]


def test_spot_frames_are_copied_as_grabbed_not_read_later_from_the_cameras_buffer():
    """Regression: the driver kept views of Nion's frames and binned them after the chunk; the session then held other counts."""
    pytest.importorskip("nion.utils", reason="nionutils is not installed (pip install -e '.[nion]')")
    from nion_ptychoscan.spot_acquisition import SpotScanner
    from nion_ptychoscan.usim_stack import NionHardware

    stem = _Stem()
    scanner = SpotScanner(NionHardware(stem, _Scan(stem), _ReusingCamera()), (0.0, 0.0, 1.0, 1.0))
    scanner.field = ScanField((0.0, 0.0, 1.0, 1.0), (1.0, 1.0))
    spots = scanner.acquire([[0.25, 0.5], [0.75, 0.5]])
    assert [float(f[0, 0]) for f in spots.frames] == [1.0, 2.0]
    np.testing.assert_allclose(spots.positions_nm, [[0.25, 0.5], [0.75, 0.5]])
