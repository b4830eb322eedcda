"""One drive's hold on a CARLA server: the settings we changed and every actor we spawned,
all undone by `close`, on a normal end, an exception or Ctrl-C.

Teardown follows CARLA client practice (REFERENCE.md) and its examples: sensors stop listening,
walkers' AI controllers stop, the Traffic Manager and the world go back to the settings the
server had, then every actor of ours is destroyed in one batch, newest first. A server that
stops answering ends the teardown at once with a message, not one timeout per actor.
"""

from __future__ import annotations

from contextlib import contextmanager

import carla

from stagepilot.sim.carla.connection import CarlaError, Endpoint, has_api


LOAD_TIMEOUT_S = 120.0  # [s] for a map load, which can take a minute on a first load


class CarlaServer:
    """Settings, Traffic Manager and actors of one drive on one server."""

    def __init__(self, client, endpoint: Endpoint, timeout_s: float):
        self.client = client
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        try:
            self.world = client.get_world()
            self.original_settings = self.world.get_settings()
        except RuntimeError as exc:
            raise endpoint.error("reading the world's settings", exc) from None
        self.actors: list = []  # everything we spawned, in spawn order
        self.controllers: list = []  # walkers' AI controllers (also in `actors`)
        self.sensors: list = []  # (also in `actors`)
        self.traffic_manager = None
        self.recorder_file: str | None = None
        self.changed_settings = False
        self.froze_lights = False  # the lights were frozen for the drive (scenario lights off)
        self.closed = False

    # ------------------------------------------------------------ world and settings

    def call(self, doing: str, function, *args, **kwargs):
        """`function(*args)`, with a server failure turned into one CarlaError naming `doing`."""
        try:
            return function(*args, **kwargs)
        except CarlaError:
            raise  # already one message
        except RuntimeError as exc:
            raise self.endpoint.error(doing, exc) from None

    def load_town(self, town: str):
        """The server's world on `town` (loaded only when another map is up); our settings stay."""
        current = self.call("reading the current map", lambda: self.world.get_map().name)
        if current.rsplit("/", 1)[-1] != town:
            with self._load_timeout():
                self.world = self.call(f"loading {town}", self.client.load_world, town, False)
        return self.world

    def load_opendrive(self, xodr_text: str, source: str):
        """A world built from an OpenDRIVE map (client.generate_opendrive_world); our settings stay."""
        parameters = carla.OpendriveGenerationParameters(vertex_distance=2.0, max_road_length=50.0,
                                                         wall_height=0.0, additional_width=0.6,
                                                         smooth_junctions=True, enable_mesh_visibility=True)
        with self._load_timeout():
            self.call(f"building a world from {source}", self.client.generate_opendrive_world, xodr_text,
                      parameters, False)
        self.world = self.call("reading the new world", self.client.get_world)
        return self.world

    @contextmanager
    def _load_timeout(self):
        """Loading a town or building a mesh takes longer than a tick: LOAD_TIMEOUT_S at least."""
        self.client.set_timeout(max(self.timeout_s, LOAD_TIMEOUT_S))
        try:
            yield
        finally:
            self.client.set_timeout(self.timeout_s)

    def synchronous(self, dt_s: float, seed: int) -> None:
        """Synchronous mode with a fixed step of `dt_s` [s]; the Traffic Manager in step with the
        world, seeded with `seed`."""
        settings = self.call("reading the world's settings", self.world.get_settings)
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = float(dt_s)
        settings.no_rendering_mode = False
        self.changed_settings = True
        self.call("switching to synchronous mode", self.world.apply_settings, settings)
        manager = self.call(f"starting the Traffic Manager on port {self.endpoint.tm_port}",
                            self.client.get_trafficmanager, self.endpoint.tm_port)
        self.traffic_manager = manager
        self.call("setting the Traffic Manager to synchronous mode", manager.set_synchronous_mode, True)
        if has_api(manager, "set_random_device_seed"):
            self.call("seeding the Traffic Manager", manager.set_random_device_seed, int(seed))

    def tick(self, doing: str) -> int:
        """One world step; the server's frame id."""
        return int(self.call(doing, self.world.tick, self.timeout_s))

    # ------------------------------------------------------------ actors

    def track(self, actor, kind: str = "actor"):
        """Register a spawned actor for teardown (kind: actor | sensor | controller)."""
        self.actors.append(actor)
        if kind == "sensor":
            self.sensors.append(actor)
        elif kind == "controller":
            self.controllers.append(actor)
        return actor

    def start_recorder(self, path: str) -> None:
        self.call(f"starting CARLA's recorder into {path}", self.client.start_recorder, path, True)
        self.recorder_file = path

    # ------------------------------------------------------------ teardown

    def close(self) -> list[str]:
        """Undo everything; returns the problems met (empty when all went well). Never raises
        for a server that is gone: a drive's own error or Ctrl-C is what the user sees first."""
        if self.closed:
            return []
        self.closed = True
        problems: list[str] = []
        steps = [("stopping sensors", self._stop_sensors),
                 ("stopping walkers' AI controllers", self._stop_controllers),
                 ("restoring the traffic lights", self._restore_lights),
                 ("restoring the server's settings", self._restore_settings),
                 ("destroying our actors", self._destroy_actors),
                 ("stopping CARLA's recorder", self._stop_recorder)]
        for doing, step in steps:
            try:
                step()
            except RuntimeError as exc:
                problems.append(str(self.endpoint.error(doing, exc)))
                if _server_gone(exc):
                    left = len(self.actors)
                    if left:
                        problems.append(f"CARLA at {self.endpoint}: {left} actor(s) of ours may remain on the server "
                                        "(it stopped answering); restarting the server removes them")
                    break
        return problems

    def _stop_sensors(self) -> None:
        for sensor in self.sensors:
            if sensor.is_listening():
                sensor.stop()

    def _stop_controllers(self) -> None:
        for controller in self.controllers:
            controller.stop()

    def _restore_lights(self) -> None:
        if self.froze_lights:  # frozen lights stay frozen until a map reload: undo it
            self.world.freeze_all_traffic_lights(False)
            self.world.reset_all_traffic_lights()
            self.froze_lights = False

    def _restore_settings(self) -> None:
        if self.traffic_manager is not None:
            self.traffic_manager.set_synchronous_mode(False)
        if self.changed_settings:
            self.world.apply_settings(self.original_settings)
            self.changed_settings = False

    def _destroy_actors(self) -> None:
        if not self.actors:
            return
        commands = [carla.command.DestroyActor(actor.id) for actor in reversed(self.actors)]
        responses = self.client.apply_batch_sync(commands, False)
        failed = [r for r in responses if r.error]
        self.actors = []
        if failed:
            raise RuntimeError(f"{len(failed)} actor(s) could not be destroyed: {failed[0].error}")

    def _stop_recorder(self) -> None:
        if self.recorder_file is not None:
            self.client.stop_recorder()


def _server_gone(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "time-out" in text or "timed out" in text or "connection" in text

