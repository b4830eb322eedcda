"""Reaching a CARLA server with the real client library: a closed port fails within the
timeout with one message naming it; leases give parallel workers one server each; sensor data
is matched by frame id and decoded from CARLA's byte layouts."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import carla
import numpy as np
import pytest

from stagepilot.core.config import CarlaConfig
from stagepilot.pipeline.cli import main
from stagepilot.sim.carla.connection import CarlaError, Endpoint, ServerLease, connect, endpoints, version_note
from stagepilot.sim.carla.sensors import SensorQueue, decode_depth, decode_rgb, decode_semantic


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe closes


def test_a_closed_port_fails_within_the_timeout_naming_the_port() -> None:
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(CarlaError) as caught:
        connect(carla.Client, Endpoint("127.0.0.1", port, 8000), timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + 3.0, f"took {elapsed:.1f} s against a 1 s timeout"
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "connecting" in message and "\n" not in message


def test_drive_against_a_closed_port_says_so_in_one_line(capsys, tmp_path) -> None:
    port = _closed_port()
    status = main(["drive", "--sim", "carla", "--port", str(port), "--timeout", "1", "--quiet",
                   "--scenario", "curve_lane_keeping", "--out", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 1 and len(lines) == 1, lines
    assert f"CARLA at localhost:{port}: connecting" in lines[0] and f"-carla-rpc-port={port}" in lines[0]


def test_servers_list_and_leases_give_each_worker_its_own_server() -> None:
    config = CarlaConfig(port=2000, servers=["localhost:2002", "gpu-2:2000:8100"])
    found = endpoints(config)
    assert found == [Endpoint("localhost", 2000, 8000), Endpoint("localhost", 2002, 8001),
                     Endpoint("gpu-2", 2000, 8100)]
    with ServerLease(found[:2], wait_s=0) as first, ServerLease(found[:2], wait_s=0) as second:
        assert {first, second} == set(found[:2])
        with pytest.raises(CarlaError, match="every server is in use"):
            ServerLease(found[:2], wait_s=0).__enter__()
    with ServerLease(found[:1], wait_s=0) as again:  # released on exit
        assert again == found[0]


def test_a_bad_servers_entry_names_it() -> None:
    with pytest.raises(ValueError, match="gpu-2:x"):
        CarlaConfig(servers=["gpu-2:x"])


def test_a_version_mismatch_is_said_plainly() -> None:
    note = version_note({"client": "0.9.16", "server": "0.9.15", "mismatch": True}, Endpoint("h", 2000, 8000))
    assert "server is 0.9.15" in note and "client" in note and "pip install carla==0.9.15" in note
    assert version_note({"client": "0.9.16", "server": "0.9.16", "mismatch": False}, Endpoint("h", 2000, 8000)) == ""


def _image(frame: int) -> SimpleNamespace:
    return SimpleNamespace(frame=frame)


def test_sensor_data_is_taken_by_frame_id_never_the_latest() -> None:
    queue = SensorQueue("front/rgb")
    for frame in (4, 5, 6):
        queue.put(_image(frame))
    assert queue.take(5, 0.1, "test").frame == 5 and queue.dropped == 1  # frame 4 was stale
    with pytest.raises(CarlaError, match="front/rgb skipped frame 5"):
        queue.take(5, 0.1, "test")  # frame 6 is next: 5 is not served twice, 6 is not served as 5
    with pytest.raises(CarlaError, match="sent nothing for frame 7 within 0.1 s"):
        queue.take(7, 0.1, "test")


def test_carla_image_bytes_decode_to_rgb_tags_and_metres() -> None:
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[0, 0] = (10, 20, 30, 255)  # B, G, R, A
    assert decode_rgb(bgra.tobytes(), 3, 2)[0, 0].tolist() == [30, 20, 10]
    bgra[1, 2] = (0, 0, 14, 255)  # the semantic camera: the tag in red
    assert decode_semantic(bgra.tobytes(), 3, 2)[1, 2] == 14
    depth = np.zeros((1, 2, 4), np.uint8)
    depth[0, 0] = (0, 0, 0, 255)
    depth[0, 1] = (255, 255, 255, 255)  # the far end: 1000 m
    metres = decode_depth(depth.tobytes(), 2, 1)
    assert metres[0, 0] == 0.0 and metres[0, 1] == pytest.approx(1000.0)
    ten = round(10.0 / 1000.0 * (256 ** 3 - 1))  # 10 m encoded: R + 256 G + 65536 B
    depth[0, 0] = (ten // 65536, (ten // 256) % 256, ten % 256, 255)
    assert decode_depth(depth.tobytes(), 2, 1)[0, 0] == pytest.approx(10.0, abs=1e-3)
    with pytest.raises(ValueError, match="expected 3x2x4"):
        decode_rgb(bytes(10), 3, 2)


def test_a_frame_that_arrives_late_is_waited_for_and_unread_frames_are_forgotten() -> None:
    import threading

    queue = SensorQueue("front/depth")
    for frame in range(1, 6):
        queue.put(_image(frame))
    queue.drop_through(4)  # ticks whose images nobody read
    assert queue.take(5, 0.1, "test").frame == 5 and queue.dropped == 0
    threading.Timer(0.2, queue.put, args=(_image(6),)).start()  # the callback thread, a bit late
    start = time.monotonic()
    assert queue.take(6, 5.0, "test").frame == 6
    assert 0.1 < time.monotonic() - start < 4.0
