"""The live view: a Foxglove WebSocket client sees a drive's channels and its camera frames
while the drive runs, and the server is gone when the drive ends, by an error too."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
import websockets
from mcap.records import Schema
from mcap_protobuf.decoder import DecoderFactory

from stagepilot.core.camera import decode_frame
from stagepilot.core.config import load_stack
from stagepilot.core.messages import EgoState, Observation, Route
from stagepilot.pipeline.driver import drive
from stagepilot.pipeline.live import LiveView
from stagepilot.sim.scenario import load_scenario

from conftest import PERFECT, default_signals

SUBPROTOCOL = "foxglove.sdk.v1"  # foxglove-sdk 0.30 refuses the older "foxglove.websocket.v1"
CAMERA_TOPIC = "/camera/front"
WAIT_S = 15.0


def live_view(config) -> LiveView:
    v = config.vehicle
    return LiveView("front", v.length_m, v.width_m, v.rear_overhang_m, port=0)


class HeldForClient:
    """The test's stand-in for a person opening Foxglove: holds the drive's first frame until a
    client subscribes to the camera, and the server's end until the client is done."""

    def __init__(self, live: LiveView):
        self.live = live
        self.started, self.client_done = threading.Event(), threading.Event()
        self._waited = False

    def start(self, sim, obs):
        self.live.start(sim, obs)
        self.started.set()

    def frame(self, obs, record):
        deadline = time.monotonic() + WAIT_S
        while not self._waited and not self.live.has_subscribers(CAMERA_TOPIC) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._waited = True
        self.live.frame(obs, record)

    def end(self, result):
        self.client_done.wait(WAIT_S)
        self.live.end(result)


async def watch(port: int, topics: set[str]) -> tuple[list[dict], dict[str, tuple[int, bytes]]]:
    """Connect, subscribe to every advertised channel and return the advertised channels and,
    per topic in `topics`, the first message's (timestamp [ns], payload)."""
    async with websockets.connect(f"ws://127.0.0.1:{port}", subprotocols=[SUBPROTOCOL]) as ws:
        channels = None
        while channels is None:
            message = json.loads(await ws.recv())
            channels = message["channels"] if message["op"] == "advertise" else None
        subscriptions = [{"id": 100 + i, "channelId": c["id"]} for i, c in enumerate(channels)]
        await ws.send(json.dumps({"op": "subscribe", "subscriptions": subscriptions}))
        topic_of = {s["id"]: c["topic"] for s, c in zip(subscriptions, channels)}
        first: dict[str, tuple[int, bytes]] = {}
        while not topics <= set(first):
            frame = await ws.recv()
            if isinstance(frame, bytes) and frame[0] == 1:  # message data: op, subscription, time, payload
                subscription, t_ns = struct.unpack_from("<IQ", frame, 1)
                first.setdefault(topic_of[subscription], (t_ns, frame[13:]))
        return channels, first


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return True
    return False


def test_a_client_sees_the_channels_and_camera_frames_while_the_drive_runs():
    config = load_stack([], [*PERFECT])
    live = live_view(config)
    held = HeldForClient(live)
    errors = []

    def run():
        try:
            drive(config, load_scenario("pedestrian_crossing", [], ()), observers=(held,), max_time_s=3.0)
        except BaseException as exc:  # surfaces in the test thread below
            errors.append(exc)
            held.started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert held.started.wait(WAIT_S) and not errors, errors
        assert live.url == f"ws://127.0.0.1:{live.port}" and live.port > 0
        channels, first = asyncio.run(asyncio.wait_for(watch(live.port, {CAMERA_TOPIC, "/scene/route"}), WAIT_S))
    finally:
        held.client_done.set()
        thread.join(WAIT_S)
    assert not thread.is_alive() and not errors, errors
    advertised = {c["topic"]: c for c in channels}
    assert {CAMERA_TOPIC, "/camera/front/calibration", "/tf", "/scene/route", "/stagepilot/decision"} <= set(advertised)
    camera = advertised[CAMERA_TOPIC]
    assert (camera["encoding"], camera["schemaName"]) == ("protobuf", "foxglove.CompressedImage")
    schema = Schema(id=1, name=camera["schemaName"], encoding=camera["schemaEncoding"],
                    data=base64.b64decode(camera["schema"]))
    t_ns, payload = first[CAMERA_TOPIC]
    image = DecoderFactory().decoder_for("protobuf", schema)(payload)
    assert image.format == "jpeg" and image.frame_id == "camera_front"
    assert image.timestamp.seconds * 10**9 + image.timestamp.nanos == t_ns  # sim time
    assert decode_frame(image.data).shape == (360, 640, 3)
    assert refused(live.port)  # the server went with the drive


class FailsAtFrame:
    def __init__(self, frame: int):
        self.at = frame

    def start(self, sim, obs):
        pass

    def frame(self, obs, record):
        if obs.frame == self.at:
            raise RuntimeError("planted fault")

    def end(self, result):
        pass


def test_the_server_stops_when_the_drive_fails_and_builds_nothing_unwatched():
    config = load_stack([], [*PERFECT])
    live = live_view(config)
    built = []
    frame = live._frames.frame
    live._frames.frame = lambda *args, **kwargs: built.append(1) or frame(*args, **kwargs)
    with pytest.raises(RuntimeError, match="planted fault"):
        drive(config, load_scenario("pedestrian_crossing", [], ()), observers=(live, FailsAtFrame(5)), max_time_s=1.0)
    assert live.port > 0 and not live.running and refused(live.port)
    assert built == []  # no client: no frame was built
    live.end(None)  # a second end does nothing


def test_a_taken_port_is_reported_and_free_again_once_the_view_ends():
    config = load_stack([], [*PERFECT])
    first, second = live_view(config), live_view(config)
    obs = Observation(t=0.0, frame=0, cameras={}, ego=EgoState(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
                      route=Route(np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([0.0, 10.0]), 10.0), route_progress=0.0)
    first.start(None, obs)
    second.requested_port = first.port
    try:
        with pytest.raises(OSError, match=f"127.0.0.1:{first.port}"):
            second.start(None, obs)
        assert not second.running
        first.end(None)
        second.start(None, obs)  # the next drive serves on the same port at once
        assert second.port == first.port
    finally:
        first.end(None)
        second.end(None)


def test_stagepilot_drive_live_serves_the_drive_to_a_client(tmp_path):
    """The command a user runs: `stagepilot drive --live` prints the URL, a client connects and
    gets the channels and camera frames while the car drives; Ctrl-C ends it as usual."""
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "stagepilot.pipeline.cli", "drive", "--live", "--live-port", "0", "--scenario",
               "town_loop", "--perception", "perfect", "--quiet", "--no-record", "--out", str(tmp_path / "run")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_signals)
    try:
        port = None
        for line in process.stderr:
            if line.startswith("live: ws://"):
                port = int(line.strip().rsplit(":", 1)[1])
                break
        assert port, "no live URL printed"
        channels, first = asyncio.run(asyncio.wait_for(watch(port, {CAMERA_TOPIC}), WAIT_S))
        assert CAMERA_TOPIC in {c["topic"] for c in channels} and first[CAMERA_TOPIC][1]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        process.kill()
        process.wait()
    assert (tmp_path / "run" / "metrics.json").exists()
