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
    try:
        return _decoder(hint)(data)
    except IncompatibleMessage as exc:
        raise IncompatibleMessage(f"{where}: {exc}" if where else str(exc)) from None


def _leaf(data: Any) -> Any:
    return _special(data) if isinstance(data, dict) else data


@lru_cache(maxsize=None)
def _decoder(hint: Any):
    """A function that decodes plain data into `hint`, built once per type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise IncompatibleMessage(f"cannot tell which of {hint} the recording holds")
        inner = _decoder(options[0])
        return lambda data: None if data is None else inner(data)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _dataclass_decoder(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])
            return lambda data: tuple(map(item, data)) if isinstance(data, list) else _leaf(data)
        items = [_decoder(a) for a in args]

        def fixed(data):
            if not isinstance(data, list):
                return _leaf(data)
            if items and len(items) != len(data):
                raise IncompatibleMessage(f"expected {len(items)} values, the recording has {len(data)}")
            return tuple(f(x) for f, x in zip(items, data)) if items else tuple(data)
        return fixed
    if origin is list:
        item = _decoder(args[0]) if args else _leaf
        return lambda data: list(map(item, data)) if isinstance(data, list) else _leaf(data)
    if origin is dict:
        value = _decoder(args[1]) if args else _leaf
        return lambda data: {k: value(v) for k, v in data.items()} if isinstance(data, dict) and not _tagged(data) else _leaf(data)
    if hint is tuple:
        return lambda data: tuple(data) if isinstance(data, list) else _leaf(data)
    return _leaf


def _tagged(data: dict) -> bool:
    return "$nd" in data or "$np" in data or "$b64" in data


def _dataclass_decoder(cls: type):
    fields = {name: _decoder(h) for name, h in _hints(cls).items()}

    def decode(data):
        if data is None:  # a field the writer left out on purpose (filled in by the reader)
            return None
        if not isinstance(data, dict):
            raise IncompatibleMessage(f"expected a {cls.__name__} object")
        try:
            values = {key: fields[key](item) for key, item in data.items()}
        except KeyError:
            unknown = sorted(set(data) - set(fields))
            raise IncompatibleMessage(f"{cls.__name__}: the recording has field(s) {unknown} that "
                                      f"{cls.__name__} does not") from None
        return cls(**values)
    return decode


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
