"""The one reader of the text files a command is given (stack configs, scenarios, training
configs, OpenDRIVE maps): bounded in size, decoded as UTF-8, and for YAML strict about
duplicate keys, aliases and nesting. Every problem is one line naming the file.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from stagepilot.core.config_base import ConfigError

MIB = 1024 * 1024
MAX_CONFIG_BYTES = 16 * MIB  # a YAML config or scenario
MAX_MAP_BYTES = 256 * MIB  # an OpenDRIVE map (CARLA's large towns run to tens of MiB)
MAX_YAML_DEPTH = 64  # nesting of YAML collections
MAX_ECHO_CHARS = 80  # an echoed value or key in an error message
MAX_PATH_CHARS = 1000  # a file name in an error message

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = MAX_ECHO_CHARS
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` as one printable line of at most about `limit` characters."""
    flat = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[: limit + 1])
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def echo(value: Any) -> str:
    """A short, one-line repr of a value from the user's input (never its full size)."""
    try:
        return clip(_REPR.repr(value))
    except ValueError:  # an int too large to print
        return f"<{type(value).__name__} too large to print>"


def read_text(path: str | Path, *, error: type[Exception] = ConfigError, kind: str = "config file",
              max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of `path`, read up to `max_bytes`; anything else raises `error` with one
    line naming the file (missing, unreadable, too large, not UTF-8, empty)."""
    data = _read_bounded(Path(path), error, max_bytes)
    path = clip(str(path), MAX_PATH_CHARS)
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {max_bytes // MIB} MiB; not a {kind}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise error(f"{path}: empty file; expected a {kind}")
    return text


def _read_bounded(path: Path, error: type[Exception], max_bytes: int) -> bytes:
    name = clip(str(path), MAX_PATH_CHARS)
    try:
        with path.open("rb") as stream:
            return stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{name}: file not found") from None
    except IsADirectoryError:
        raise error(f"{name}: is a folder, not a file") from None
    except OSError as exc:
        raise error(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None


class StrictYamlError(yaml.YAMLError):
    """A YAML document that parses but that a config must not be: `line` is 1-based."""

    def __init__(self, line: int, problem: str):
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


class StrictLoader(yaml.SafeLoader):
    """safe_load, plus: a duplicate mapping key, an alias (`*name`, which also stops
    exponential "billion laughs" documents) or nesting deeper than MAX_YAML_DEPTH is an error."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise StrictYamlError(event.start_mark.line + 1,
                                  f"alias *{clip(str(event.anchor))}: YAML aliases are not supported")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise StrictYamlError(self.peek_event().start_mark.line + 1,
                                      f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: safe_load's own error follows
                continue
            if duplicate:
                raise StrictYamlError(key_node.start_mark.line + 1, f"duplicate key {echo(key)}")
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # beyond Python's digit limit for int()
            raise StrictYamlError(node.start_mark.line + 1, "integer too large") from None


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


def parse_yaml(text: str) -> Any:
    """`text` as YAML through StrictLoader; raises yaml.YAMLError (StrictYamlError included)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506  (a SafeLoader subclass)
    except OverflowError as exc:  # PyYAML's scanner on an escape like "\U99999999" (chr() of a huge code)
        raise yaml.YAMLError(f"an escape sequence names no character ({exc})") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying where and what: 'line 3: duplicate key ...' or 'malformed YAML at ...'."""
    if isinstance(exc, StrictYamlError):
        return f"line {exc.line}: {exc.problem}"
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"malformed YAML: character #x{code:04x} (character {exc.position} of the text) is not allowed"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["unreadable"])[0]
    return f"malformed YAML{where}: {clip(problem)}"


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """One YAML file whose top is a mapping; any problem raises ConfigError naming the file."""
    text = read_text(path)
    path = clip(str(path), MAX_PATH_CHARS)
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(f"{path}: no YAML content (only comments); expected a mapping of keys")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def named_yaml(name_or_path: str | Path, folder: Path, noun: str, file_noun: str) -> Path:
    """A YAML file by name from `folder` (`town_loop` -> folder/town_loop.yaml) or by path
    (anything ending in .yaml/.yml, or an existing file). ConfigError when it is not there:
    `<path>: <file_noun> not found`, or `<name>: no such <noun> (known: ...)`."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or _exists(path):  # a device or a FIFO too: the reader bounds it
        if not _exists(path):
            raise ConfigError(f"{clip(str(path), MAX_PATH_CHARS)}: {file_noun} not found")
        return path
    candidate = Path(folder) / f"{name_or_path}.yaml"
    if not _exists(candidate):
        known = ", ".join(sorted(p.stem for p in Path(folder).glob("*.yaml")))
        raise ConfigError(f"{clip(str(name_or_path), MAX_PATH_CHARS)}: no such {noun} (known: {known})")
    return candidate


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to be a file
        return False
