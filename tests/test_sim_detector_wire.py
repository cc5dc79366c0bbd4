"""Wire compatibility of the simulated detector with a real receiver (libertem-dectris), and of our decoder with its sender."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from service_testing import receive_libertem

from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from detector_stream.receiver import StreamReceiver

ld = pytest.importorskip("libertem_dectris")

API = "/detector/api/1.8.0"


def _configure(client, **config):
    for key, value in config.items():
        r = client.put(f"{API}/config/{key}", json={"value": value})
        assert r.status_code == 200, r.text




@pytest.fixture
def libertem(sim_detector, tmp_path):
    detector = sim_detector[0]
    conn = ld.DectrisConnection(
        uri=detector.endpoint, frame_stack_size=8, handle_path=str(tmp_path / "shm"), num_slots=200, bytes_per_frame=64 * 64 * 4
    )
    cam = ld.CamClient(conn.get_socket_path())
    try:
        yield conn, cam
    finally:
        cam.close()
        conn.close()


# libertem-dectris decodes bitshuffle-LZ4 and LZ4 of every pixel type; it cannot decode raw "<".
@pytest.mark.parametrize(
    ("bits", "compression", "mode"),
    [(b, c, "active") for b in (8, 16, 32) for c in ("bslz4", "lz4")] + [(16, "bslz4", "passive"), (32, "lz4", "passive")],
)
def test_libertem_receives_bit_exact_frames(sim_detector, libertem, bits, compression, mode):
    detector, _, client = sim_detector
    conn, cam = libertem
    n = 12
    detector.scan.set_positions(np.column_stack([np.linspace(0, 1, n), np.linspace(0, 0.5, n)]))
    _configure(client, bit_depth_image=bits, compression=compression, nimages=n, ntrigger=1, trigger_mode="ints", frame_time=0.0)
    if mode == "passive":
        conn.start_passive(timeout=5)
        sequence = client.put(f"{API}/command/arm").json()["sequence id"]
        armed = conn.wait_for_arm(timeout=5)
        assert armed is not None and armed[1] == sequence
        assert armed[0].get_num_frames() == n
    else:
        sequence = client.put(f"{API}/command/arm").json()["sequence id"]
        conn.start(sequence, timeout=5)
    assert client.put(f"{API}/command/trigger").status_code == 200
    frames = receive_libertem(conn, cam, n)
    assert frames.shape == (n, 64, 64) and frames.dtype == np.dtype(f"uint{bits}")
    np.testing.assert_array_equal(frames, detector.last_images)
    assert client.get(f"{API}/status/state").json()["value"] == "idle"  # series ended right after its last frame


def test_our_receiver_gets_bit_exact_frames_every_encoding_header_detail_and_appendix(sim_detector):
    detector, _, client = sim_detector
    events = []
    with StreamReceiver([detector.endpoint], lambda ep, e: events.append(e)):
        for bits in (8, 16, 32):
            for compression in ("bslz4", "lz4", "none"):
                for detail in ("none", "basic", "all"):
                    client.put("/stream/api/1.8.0/config/header_detail", json={"value": detail})
                    appendix = "" if detail == "basic" else f'{{"note": "appendix {detail}"}}'
                    client.put("/stream/api/1.8.0/config/image_appendix", json={"value": appendix})
                    _configure(client, bit_depth_image=bits, compression=compression, nimages=3, frame_time=0.0)
                    before = len(events)
                    seq = client.put(f"{API}/command/arm").json()["sequence id"]
                    client.put(f"{API}/command/trigger")
                    deadline = time.monotonic() + 10
                    while not any(isinstance(e, SeriesEnd) and e.series == seq for e in events[before:]):
                        assert time.monotonic() < deadline, "series end not received"
                        time.sleep(0.01)
                    got = events[before:]
                    assert not [e for e in got if isinstance(e, StreamError)]
                    assert isinstance(got[0], SeriesStart) and got[0].header_detail == detail
                    frames = [e.image for e in got if isinstance(e, Frame)]
                    np.testing.assert_array_equal(np.stack(frames), detector.last_images)
                    assert frames[0].dtype == np.dtype(f"uint{bits}")


def test_libertem_sim_sender_decodes_with_our_decoder(tmp_path):
    """libertem-dectris's reference sender (config as its own message, zeroed bitshuffle header) -> our receiver."""
    sims = [ld.DectrisSim.new_mocked("tcp://127.0.0.1", 6, random_port=True) for _ in range(2)]
    events = []
    receiver = StreamReceiver([sims[0].get_uri()], lambda ep, e: events.append(e))
    conn = ld.DectrisConnection(uri=sims[1].get_uri(), frame_stack_size=8, handle_path=str(tmp_path / "shm"), num_slots=50,
                                bytes_per_frame=512 * 512 * 2)
    cam = ld.CamClient(conn.get_socket_path())
    try:
        receiver.start()
        conn.start_passive(timeout=5)
        for sim in sims:
            threading.Thread(target=lambda s=sim: (s.send_headers(), s.send_frames(), s.send_footer()), daemon=True).start()
        assert conn.wait_for_arm(timeout=10) is not None
        reference = receive_libertem(conn, cam, 6)
        deadline = time.monotonic() + 10
        while not any(isinstance(e, SeriesEnd) for e in events):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        receiver.stop()
        cam.close()
        conn.close()
    assert not [e for e in events if isinstance(e, StreamError)]
    assert isinstance(events[0], SeriesStart) and events[0].config["ntrigger"] == 6
    ours = np.stack([e.image for e in events if isinstance(e, Frame)])
    assert ours.shape == (6, 512, 512)
    np.testing.assert_array_equal(ours, reference)  # the mocked data are the same in both senders


def test_libertem_sim_replays_our_messages_bit_exact(tmp_path):
    """libertem-dectris's Rust sender parses a dump of our messages; its receiver decodes them bit-exact."""
    from detector_stream.codec import encode_frames
    from detector_stream.messages import image_parts, series_start_parts
    from sim_microscope.detector_config import default_config
    from sim_microscope.libertem_dump import write_dump

    n = 40
    images = np.random.default_rng(5).poisson(3, size=(n, 64, 64)).astype(np.uint16)
    config = {**default_config(64), "nimages": 1, "ntrigger": n, "trigger_mode": "exte"}
    blobs = encode_frames(images, "bs16-lz4<")
    messages = [series_start_parts(4, config, "basic")]
    messages += [image_parts(4, i, images[i], "bs16-lz4<", 0, 1, 1, blob=blobs[i]) for i in range(n)]
    sim = ld.DectrisSim("tcp://127.0.0.1", str(write_dump(tmp_path / "dump.bin", messages)), random_port=True)
    assert sim.get_detector_config().get_num_frames() == n
    conn = ld.DectrisConnection(uri=sim.get_uri(), frame_stack_size=8, handle_path=str(tmp_path / "shm"), num_slots=50,
                                bytes_per_frame=64 * 64 * 2)
    cam = ld.CamClient(conn.get_socket_path())
    try:
        conn.start_passive(timeout=5)
        threading.Thread(target=lambda: (sim.send_headers(), sim.send_frames(), sim.send_footer()), daemon=True).start()
        armed = conn.wait_for_arm(timeout=10)
        assert armed is not None and armed[1] == 4
        np.testing.assert_array_equal(receive_libertem(conn, cam, n), images)
    finally:
        cam.close()
        conn.close()

