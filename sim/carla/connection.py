"""Reaching a CARLA server: which one, connecting with a deadline, versions, and one lease
per server so that parallel workers never share one.

Every failure here is one `CarlaError` that names the host, the port and what was being
done. Capabilities are read from the API (`has_api`), never from version strings.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from stagepilot.core.config import CarlaConfig
from stagepilot.sim.interface import SimulatorError

LEASE_POLL_S = 0.5
WAIT_NOTE_S = 5.0  # [s] then say why we wait


class CarlaError(SimulatorError):
    """The CARLA server refused, went away, timed out, or could not do what was asked."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tm_port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def error(self, doing: str, exc: BaseException | str) -> CarlaError:
        """One message: the server, what we were doing, what went wrong, what to check."""
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "time-out" in detail or "timed out" in detail or "connect" in detail.lower():
            detail = "the server did not answer in time"  # CARLA's own text repeats host and port
            hint = (f"; is a CARLA server running at {self.host} with -carla-rpc-port={self.port} "
                    "(docs/carla.md), and is carla.timeout_s long enough?")
        return CarlaError(f"CARLA at {self.host}:{self.port}: {doing}: {detail}{hint}")


def endpoints(config: CarlaConfig) -> list[Endpoint]:
    """The configured server first, then `servers` ("host:port[:tm_port]"); each extra server's
    Traffic Manager defaults to a port of its own (tm_port + its index)."""
    found = [Endpoint(config.host, config.port, config.tm_port)]
    for index, entry in enumerate(config.servers, start=1):
        host, *ports = entry.rsplit(":", 2) if entry.count(":") == 2 else entry.rsplit(":", 1)
        tm_port = int(ports[1]) if len(ports) > 1 else config.tm_port + index
        found.append(Endpoint(host, int(ports[0]), tm_port))
    return list(dict.fromkeys(found))


class ServerLease:
    """Holds one server of `candidates` for this process: a lock file per server, so that the
    parallel workers of `evaluate` or `tune` on one machine take one server each and wait for a
    free one when there are more workers than servers."""

    def __init__(self, candidates: list[Endpoint], wait_s: float | None):
        self.candidates = candidates
        self.wait_s = wait_s  # None: as long as it takes (another worker's drive ends)
        self.endpoint: Endpoint | None = None
        self._file = None

    def __enter__(self) -> Endpoint:
        start = time.monotonic()
        said = False
        while True:
            for endpoint in self.candidates:
                if self._try(endpoint):
                    self.endpoint = endpoint
                    return endpoint
            waited = time.monotonic() - start
            if self.wait_s is not None and waited >= self.wait_s:
                break
            if not said and waited > WAIT_NOTE_S:
                print(f"stagepilot: waiting for a free CARLA server ({self._names()} in use by other stagepilot "
                      "processes on this machine)", file=sys.stderr)
                said = True
            time.sleep(LEASE_POLL_S)
        raise CarlaError(f"CARLA at {self._names()}: every server is in use by another stagepilot process on this "
                         f"machine (waited {self.wait_s:g} s); add servers with carla.servers or run fewer workers")

    def _names(self) -> str:
        return ", ".join(str(e) for e in self.candidates)

    def _try(self, endpoint: Endpoint) -> bool:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{endpoint.host}-{endpoint.port}")
        path = Path(tempfile.gettempdir()) / f"stagepilot-carla-{safe}.lock"
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def connect(client_class, endpoint: Endpoint, timeout_s: float):
    """A client of the server at `endpoint` that has answered, with `timeout_s` on every call.
    Returns (client, versions) where versions says client and server and whether they differ."""
    try:
        client = client_class(endpoint.host, endpoint.port)
        client.set_timeout(float(timeout_s))
        server = client.get_server_version()
    except RuntimeError as exc:
        raise endpoint.error(f"connecting (waited {timeout_s:g} s)", exc) from None
    versions = {"client": str(client.get_client_version()), "server": str(server)}
    versions["mismatch"] = versions["client"] != versions["server"]
    return client, versions


def version_note(versions: dict, endpoint: Endpoint) -> str:
    """One plain line when the client and server versions differ, else ''."""
    if not versions["mismatch"]:
        return ""
    return (f"CARLA at {endpoint}: the server is {versions['server']} and this client (the carla wheel) is "
            f"{versions['client']}; most calls work across 0.9.x, but if a call fails, install the wheel that "
            f"matches the server (pip install carla=={versions['server'].split('-')[0]})")


def has_api(obj, name: str) -> bool:
    """Whether the client library offers `name` on `obj`: capabilities come from the API."""
    return callable(getattr(obj, name, None))
