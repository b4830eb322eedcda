"""Stage messages to JSON and back, exactly: what a recording's stage channels hold.

Python's JSON writes a float as its shortest round-trip repr, so every float64 reads back
bit for bit (NaN and the infinities as JSON's NaN / Infinity tokens, which Python reads).
numpy arrays travel as their raw bytes in base64 with dtype and shape, numpy scalars with
their dtype, bytes in base64; everything else is JSON's own. Decoding is driven by the
message classes' type hints (core/messages.py), so tuples come back as tuples and a float32
scalar as a float32: a stage fed a decoded message computes exactly what it computed on the
original. A field that the class does not have is an incompatible recording
(`IncompatibleMessage`); a field that the recording lacks takes the class's default.

MESSAGE_VERSION is the contract between recordings and this code: bump it when a change to
the messages would make old recordings decode to something else.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import types
import typing
from functools import lru_cache
from typing import Any, Union

import numpy as np

from stagepilot.core import messages

MESSAGE_VERSION = 1


class RecordingError(Exception):
    """A recording that cannot be read or replayed; the message is one line."""


class IncompatibleMessage(ValueError):
    """A recorded message that this code's message classes cannot represent."""


def message_fingerprint() -> str:
    """A digest of every message class's fields and their types: it changes when a field does."""
    parts = []
    for name in sorted(vars(messages)):
        cls = getattr(messages, name)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == messages.__name__:
            parts.append(name + "(" + ",".join(f"{f.name}:{f.type}" for f in dataclasses.fields(cls)) + ")")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ encode


def to_plain(value: Any) -> Any:
    """`value` as JSON-able data that `from_plain` turns back into an equal (bitwise) value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        if array.dtype == object:
            raise TypeError("an object array cannot be recorded")
        return {"$nd": array.dtype.str, "shape": list(array.shape), "b64": base64.b64encode(array.tobytes()).decode()}
    if isinstance(value, np.generic):
        return {"$np": value.dtype.str, "v": value.item()}
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode()}
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    raise TypeError(f"cannot record a {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """The JSON bytes of a message (or any plain structure of them)."""
    return json.dumps(to_plain(value), separators=(",", ":")).encode()


# ------------------------------------------------------------------ decode


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _special(data: Any) -> Any:
    if isinstance(data, dict):
        if "$nd" in data:
            array = np.frombuffer(base64.b64decode(data["b64"]), dtype=np.dtype(data["$nd"]))
            return array.reshape(data["shape"]).copy()
        if "$np" in data:
            return np.dtype(data["$np"]).type(data["v"])
        if "$b64" in data:
            return base64.b64decode(data["$b64"])
    return data


def from_plain(data: Any, hint: Any, where: str = "") -> Any:
    """`data` (from `to_plain`) as a value of type `hint`."""
    data = _special(data)
    if not isinstance(data, (dict, list)) or hint is Any:
        return data
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise IncompatibleMessage(f"{where}: cannot tell which of {hint} the recording holds")
        return from_plain(data, options[0], where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise IncompatibleMessage(f"{where}: expected a {hint.__name__} object")
        hints = _hints(hint)
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise IncompatibleMessage(f"{where or hint.__name__}: the recording has field(s) {unknown} "
                                      f"that {hint.__name__} does not")
        return hint(**{key: from_plain(item, hints[key], f"{where}.{key}".lstrip(".")) for key, item in data.items()})
    if origin is tuple and isinstance(data, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(item, args[0], f"{where}[{i}]") for i, item in enumerate(data))
        if args and len(args) != len(data):
            raise IncompatibleMessage(f"{where}: expected {len(args)} values, the recording has {len(data)}")
        return tuple(from_plain(item, arg, f"{where}[{i}]") for i, (item, arg) in enumerate(zip(data, args or [Any] * len(data))))
    if origin is list and isinstance(data, list):
        return [from_plain(item, args[0] if args else Any, f"{where}[{i}]") for i, item in enumerate(data)]
    if origin is dict and isinstance(data, dict):
        value_hint = args[1] if args else Any
        return {key: from_plain(item, value_hint, f"{where}.{key}") for key, item in data.items()}
    if hint is tuple and isinstance(data, list):
        return tuple(data)
    return data


def loads(raw: bytes, hint: Any, where: str = "") -> Any:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IncompatibleMessage(f"{where}: not JSON ({exc})") from None
    return from_plain(data, hint, where)


# ------------------------------------------------------------------ bitwise equality


def same(a: Any, b: Any) -> bool:
    """Bitwise equality of two messages: arrays by dtype, shape and bytes (so NaN equals the
    same NaN), floats by their bits."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b
