"""Configuration documents (YAML, TOML or JSON) read with errors people can act on.

What the policy and the detection tuning share: the format from the file
name, the text decoded (UTF-8, then the format's parser, duplicate keys
refused in every format), and the decoded data converted into msgspec
Structs (``forbid_unknown_fields``) with each failure told as the field it
is about (``network.allow[1].ports[0]``) and why, in the document's own
names. Everything raises :class:`ConfigError`; each kind of document turns
it into its own error class, whose messages say what the document is ("the
policy", "the tuning").
"""

from __future__ import annotations

import functools
import json
import os
import re
import typing
from typing import Any, Literal, Mapping, Optional, TypeVar, Union

import msgspec

from .errors import RuntimeGuardError

__all__ = ["ConfigError", "EXTENSIONS", "Format", "convert", "decode", "field_error", "field_path",
           "format_from_name", "join_path", "line_of", "mapping", "read", "text_of"]

Format = Literal["yaml", "toml", "json"]
EXTENSIONS: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}

T = TypeVar("T")


class ConfigError(RuntimeGuardError, ValueError):
    """A document that cannot be used: the field (``network.allow[1].ports[0]``,
    or ``""`` for the document as a whole), why, and the line where known."""

    def __init__(self, field: str, reason: str, source: str = "<text>", line: Optional[int] = None):
        self.field = field
        self.reason = reason
        self.source = source
        self.line = line
        super().__init__(field, reason, source, line)

    def __str__(self) -> str:
        where = f"{self.source}, line {self.line}" if self.line else self.source
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


# ---- reading and decoding ----

def format_from_name(source: str) -> Format:
    """The format a file name's extension says (.yaml, .yml, .toml, .json)."""
    found = EXTENSIONS.get(os.path.splitext(source)[1].lower())
    if found is None:
        raise ConfigError("", "cannot tell the format from the file name: use .yaml, .yml, .toml or .json, or "
                              "give the format", source)
    return found


def read(path: Union[str, os.PathLike], what: str) -> bytes:
    """The file's bytes; what ("policy") names the document in the error."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read the {what}: {e.strerror or e}", os.fspath(path)) from None


def text_of(document: Union[str, bytes], source: str, what: str) -> str:
    """The document as text: bytes must be UTF-8."""
    if isinstance(document, str):
        return document
    try:
        return bytes(document).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"the {what} is not UTF-8 text: {e.reason} at byte {e.start}", source) from None


def decode(document: Union[str, bytes], format: str, source: str, what: str) -> Any:
    """The document's data, as the format's parser returns it. Bytes must be
    UTF-8; a key given twice is an error in every format (each parser would
    otherwise keep the last one silently: a whole ``network:`` section, say)."""
    text = text_of(document, source, what)
    if format == "yaml":
        yaml, loader = _yaml_loader()
        try:
            return yaml.load(text, Loader=loader)
        except yaml.MarkedYAMLError as e:
            raise ConfigError("", "YAML syntax error " + _yaml_reason(e), source) from None
        except Exception as e:  # noqa: BLE001 - the parser's failures are the document's: report, never crash
            raise ConfigError("", f"YAML error: {e}", source) from None
    if format == "toml":
        try:
            return msgspec.toml.decode(text)
        except Exception as e:  # noqa: BLE001 - as above
            raise ConfigError("", f"TOML syntax error: {e}", source) from None
    if format == "json":
        try:
            data = msgspec.json.decode(text)
        except Exception as e:  # noqa: BLE001 - as above
            raise ConfigError("", f"JSON syntax error: {_json_reason(str(e), text)}", source) from None
        _json_duplicates(text, source)
        return data
    raise ConfigError("", f"unknown {what} format {format!r} (expected yaml, toml or json)", source)


def mapping(data: Any, source: str, what: str) -> Mapping:
    """data, which must be a mapping: a document of anything else is refused whole."""
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError("", f"the {what} document is {kind}", source)
    return data


@functools.lru_cache(maxsize=None)
def _yaml_loader():
    """(the yaml module, the safe loader refusing duplicate keys), made once."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc, valid-type]
        """The safe loader, refusing duplicate keys: the last one would
        silently replace the first."""

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                    key_node.start_mark)
            seen.add(key)
        return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    return yaml, Loader


def _yaml_reason(e) -> str:
    mark = e.problem_mark or e.context_mark
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ": "
    what = e.problem or e.context or "invalid document"
    if e.context and e.problem:
        what += f" ({e.context}"
        if e.context_mark is not None and e.context_mark is not mark:
            what += f" at line {e.context_mark.line + 1}"
        what += ")"
    return where + what


def _json_reason(message: str, text: str) -> str:
    # msgspec reports a byte offset; people read line and column.
    m = re.search(r"\(byte (\d+)\)$", message)
    if not m:
        return message
    before = text.encode("utf-8")[: int(m.group(1))].decode("utf-8", "replace")
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    return message[: m.start()].rstrip() + f" (line {line}, column {column})"


class _DuplicateKey(Exception):
    pass


def _json_duplicates(text: str, source: str) -> None:
    # msgspec keeps the last of duplicate keys silently; refuse them as YAML does.
    def pairs(items):
        seen = set()
        for key, _ in items:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
        return None

    try:
        json.loads(text, object_pairs_hook=pairs)
    except _DuplicateKey as e:
        raise ConfigError("", f"JSON error: duplicate key {e.args[0]!r}", source) from None
    except Exception:  # noqa: BLE001 - msgspec accepted the document; this pass only looks for duplicates
        pass


# ---- converting into Structs: errors as field paths ----

def convert(data: Mapping, into: type[T], source: str, noun: str = "field") -> T:
    """data as into (a msgspec Struct, ``forbid_unknown_fields``); a value
    that does not fit is a ConfigError naming its field (noun: what the
    document calls its fields, "field" or "key")."""
    try:
        return msgspec.convert(dict(data), into)
    except msgspec.ValidationError as e:
        field, reason = field_error(str(e), into, noun)
        raise ConfigError(field, reason, source) from None
    except RecursionError:
        # A YAML alias can make a document contain itself.
        raise ConfigError("", "the document nests too deeply (or contains itself)", source) from None


_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def field_path(jsonpath: str) -> tuple[str, list[Union[str, int]]]:
    """``$.network.allow[1].cidr`` (msgspec's) -> ``network.allow[1].cidr`` and its parts."""
    parts: list[Union[str, int]] = []
    for m in _PATH_PART.finditer(jsonpath[1:] if jsonpath.startswith("$") else jsonpath):
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    return join_path(parts), parts


def join_path(parts: list) -> str:
    """Keys and indexes as a field path: ``["ports", 0]`` -> ``ports[0]``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _type_at(root: Any, parts: list) -> Any:
    """The declared type at a path in a document decoded into root, or None."""
    t: Any = root
    for p in parts:
        t = _unwrap(t)
        origin, args = typing.get_origin(t), typing.get_args(t)
        if isinstance(p, int):
            if origin is not tuple or not args:
                return None
            t = args[0]
        elif origin is dict and len(args) == 2:
            t = args[1]
        elif isinstance(t, type) and issubclass(t, msgspec.Struct):
            t = next((f.type for f in msgspec.structs.fields(t) if f.encode_name == p), None)
            if t is None:
                return None
        else:
            return None
    return _unwrap(t)


def _unwrap(t: Any) -> Any:
    # Optional[X] -> X
    if typing.get_origin(t) is Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


def field_error(message: str, root: Any, noun: str = "field") -> tuple[str, str]:
    """msgspec's ValidationError message about a document decoded into root:
    (the field it is about, why), in the document's own names."""
    m = re.fullmatch(r"(.*?)(?: - at `([^`]*)`(?: in `([^`]*)`)?)?", message, re.S)
    reason, at, within = m.group(1), m.group(2) or "$", m.group(3)
    if at == "key" and within is not None:
        field, _ = field_path(within)
        return field, f"keys must be strings ({reason[0].lower() + reason[1:]})"
    field, parts = field_path(at)
    named = re.fullmatch(r"Object (missing required|contains unknown) field `(.*)`", reason)
    if named:
        child = join_path(parts + [named.group(2)])
        if named.group(1) == "missing required":
            return child, f"required {noun} missing"
        t = _type_at(root, parts)
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            known = ", ".join(f.encode_name for f in msgspec.structs.fields(t))
            return child, f"unknown {noun} (expected one of: {known})"
        return child, f"unknown {noun}"
    if reason.startswith("Invalid enum value"):
        t = _type_at(root, parts)
        if typing.get_origin(t) is Literal:
            value = reason[len("Invalid enum value "):]
            return field, f"invalid value {value} (expected one of: {', '.join(map(str, typing.get_args(t)))})"
    return field, reason


# ---- where a field is in the text ----

_KEY_PART = re.compile(r"\.?([^.\[]+)|\[(\d+)\]")


def line_of(text: str, field: str) -> Optional[int]:
    """The line of the YAML node a field path names (the deepest of its
    parts that exists), or None."""
    yaml, loader = _yaml_loader()
    try:
        node = yaml.compose(text, Loader=loader)
    except Exception:  # noqa: BLE001 - only a hint for a message about a document that parsed already
        return None
    line = None
    for m in _KEY_PART.finditer(field):
        if node is None:
            break
        if m.group(2) is not None and isinstance(node, yaml.SequenceNode):
            i = int(m.group(2))
            if i >= len(node.value):
                break
            node = node.value[i]
            line = node.start_mark.line + 1
        elif m.group(1) is not None and isinstance(node, yaml.MappingNode):
            key = m.group(1)
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        else:
            break
    return line
