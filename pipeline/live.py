"""The live view: a drive's viewer messages (pipeline/viewer.py) served to Foxglove over its
WebSocket protocol while the drive runs, as an observer of the driver.

`start` starts the server, `frame` publishes what a connected client subscribes to, `end` stops
the server (also after Ctrl-C or a fault). A frame with no client watching costs a few channel
checks; logging never waits on a client (the server drops the oldest data a slow client has
not taken). The server has its own foxglove Context, so nothing it publishes reaches another
foxglove sink in the process, and two live views never share channels.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

import foxglove

from stagepilot.core.messages import Observation
from stagepilot.pipeline.driver import DriveResult
from stagepilot.pipeline.records import FrameRecord
from stagepilot.pipeline.viewer import Payload, ViewerFrames


class _Subscriptions:
    """Server listener (called on the server's threads): notes that a client subscribed, so
    the drive thread sends the start messages (route, calibration) again for it."""

    def __init__(self) -> None:
        self.new = threading.Event()

    def on_subscribe(self, client, channel) -> None:
        self.new.set()


class LiveView:
    """Serves a drive to Foxglove at `url`; pass it to `driver.drive(..., observers=(live,))`.
    `port` 0 picks a free port; `.port` is the bound one once started."""

    def __init__(self, camera: str, vehicle_length_m: float, vehicle_width_m: float, rear_overhang_m: float,
                 host: str = "127.0.0.1", port: int = 8765):
        self.host, self.requested_port = host, port
        self.port: int | None = None  # the bound port, while and after the server runs
        self._frames = ViewerFrames(camera, vehicle_length_m, vehicle_width_m, rear_overhang_m)
        self._subscriptions = _Subscriptions()
        self._server = None
        self._context: foxglove.Context | None = None
        self._channels: dict[str, foxglove.Channel] = {}
        self._start_payloads: list[Payload] = []

    @property
    def url(self) -> str:
        """The WebSocket address to open in Foxglove, e.g. ws://127.0.0.1:8765."""
        return f"ws://{self.host}:{self.port if self.port is not None else self.requested_port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, sim, obs: Observation) -> None:
        """Start the server, advertise every viewer channel and print the URL to open (stderr).
        Raises OSError when the address cannot be bound."""
        self._context = context = foxglove.Context()  # the channels live only as long as it does
        try:
            self._server = foxglove.start_server(name="stagepilot", host=self.host, port=self.requested_port,
                                                 context=context, server_listener=self._subscriptions)
        except RuntimeError as exc:  # foxglove reports a failed bind as a RuntimeError
            raise OSError(f"live view: cannot serve on {self.host}:{self.requested_port}: {exc}") from None
        self.port = self._server.port
        print(f"live: {self.url}", file=sys.stderr, flush=True)
        self._channels = {
            c.topic: foxglove.Channel(c.topic, schema=foxglove.Schema(name=c.schema_name, encoding=c.schema_encoding,
                                                                      data=c.schema_data),
                                      message_encoding=c.message_encoding, context=context)
            for c in self._frames.channels()}
        self._start_payloads = self._frames.start(obs)
        self._log(self._start_payloads)

    def frame(self, obs: Observation, record: FrameRecord) -> None:
        """Publish the frame's messages on the channels a client subscribes to."""
        if self._server is None:
            return
        if self._subscriptions.new.is_set():  # a client that came late still gets the route
            self._subscriptions.new.clear()
            self._log(self._start_payloads)
        watched = {topic for topic, channel in self._channels.items() if channel.has_sinks()}
        if watched:
            self._log(self._frames.frame(obs, record, topics=watched))

    def end(self, result: DriveResult | None) -> None:
        """Stop the server and wait (up to a second) until its port is free again, so that the
        next drive can serve on it; safe to call more than once, and when `start` never ran."""
        server, self._server = self._server, None
        if server is None:
            return
        for channel in self._channels.values():
            channel.close()
        self._channels, self._context = {}, None
        server.stop()
        _wait_until_released(self.host, self.port, timeout_s=1.0)

    def has_subscribers(self, topic: str) -> bool:
        """Whether a client subscribes to `topic` now."""
        channel = self._channels.get(topic)
        return channel is not None and channel.has_sinks()

    def _log(self, payloads: list[Payload]) -> None:
        for topic, log_time_ns, data in payloads:
            self._channels[topic].log(data, log_time=log_time_ns)


def _wait_until_released(host: str, port: int, timeout_s: float) -> None:
    """Wait until `port` could be bound again: foxglove's `stop` returns before its listening
    socket is closed. SO_REUSEADDR, as the server's own bind, so that connections in TIME_WAIT
    do not count."""
    deadline = time.monotonic() + timeout_s
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
        time.sleep(0.001)
