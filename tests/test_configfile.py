"""Configuration documents (runtimeguard.configfile): the three formats decode
the same data, and every failure names the field it is about."""

from __future__ import annotations

import json
import pickle
import re
from typing import Any, Union

import msgspec
import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from runtimeguard import configfile
from runtimeguard.configfile import ConfigError

# Names as a document may spell them: anything but the characters a field
# path is written with (".", "[", "]"), the backquote msgspec quotes with,
# and what msgspec refuses in a field name (backslash, double quote).
KEYS = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=".[]`\\\""), min_size=1,
               max_size=12)
# A step into a document: a key of a mapping, or an index into a list.
PATHS = st.lists(st.one_of(KEYS, st.integers(0, 3)), max_size=6)


def struct_type(parts: list[Union[str, int]], leaf: Any) -> Any:
    """The type a document with leaf at parts decodes into: a Struct per key
    (forbidding unknown fields, its one field named by the key), a tuple per
    index."""
    t = leaf
    for part in reversed(parts):
        if isinstance(part, int):
            t = tuple[t, ...]
        else:
            t = msgspec.defstruct("Section", [("value", t)], rename={"value": part}, forbid_unknown_fields=True)
    return t


def valid(t: Any) -> Any:
    """The smallest document that decodes into t."""
    if t is int:
        return 0
    if isinstance(t, type) and issubclass(t, msgspec.Struct):
        (field,) = msgspec.structs.fields(t)
        return {field.encode_name: valid(field.type)}
    return []


def document(parts: list[Union[str, int]], leaf: Any, t: Any) -> Any:
    """A document of type t but for leaf at parts (each list padded with valid items before it)."""
    if not parts:
        return leaf
    part, rest = parts[0], parts[1:]
    if isinstance(part, int):
        item = t.__args__[0]
        return [valid(item)] * part + [document(rest, leaf, item)]
    (field,) = msgspec.structs.fields(t)
    return {part: document(rest, leaf, field.type)}


def written(parts: list[Union[str, int]]) -> str:
    """A field path as the messages write it: ``network.allow[1].ports[0]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def struct_at(t: Any, parts: list[Union[str, int]]) -> Any:
    for part in parts:
        t = t.__args__[0] if isinstance(part, int) else msgspec.structs.fields(t)[0].type
    return t


# ---- field paths ----

@given(parts=PATHS)
def test_a_value_of_the_wrong_type_is_named_by_its_path(parts):
    root = struct_type(["top"] + parts, int)
    data = document(["top"] + parts, "not a number", root)
    with pytest.raises(ConfigError) as got:
        configfile.convert(data, root, "doc.yaml")
    assert got.value.field == written(["top"] + parts)
    assert got.value.reason == "Expected `int`, got `str`"
    assert str(got.value) == f"doc.yaml: {got.value.field}: Expected `int`, got `str`"


@given(parts=st.lists(KEYS, max_size=5).map(lambda keys: ["top"] + keys), extra=KEYS,
       noun=st.sampled_from(["field", "key"]))
def test_an_unknown_field_is_named_with_the_ones_its_section_knows(parts, extra, noun):
    assume(extra != parts[-1])
    root = struct_type(parts, int)
    section = struct_at(root, parts[:-1])
    data = document(parts[:-1], {**valid(section), extra: 1}, root)
    with pytest.raises(ConfigError) as got:
        configfile.convert(data, root, "doc", noun=noun)
    assert got.value.field == written(parts[:-1] + [extra])
    assert got.value.reason == f"unknown {noun} (expected one of: {parts[-1]})"


@given(parts=st.lists(st.one_of(KEYS, st.integers(0, 3)), max_size=5).map(lambda p: ["top"] + p + ["last"]))
def test_a_missing_field_is_named_by_its_path(parts):
    root = struct_type(parts, int)
    with pytest.raises(ConfigError) as got:
        configfile.convert(document(parts[:-1], {}, root), root, "doc")
    assert (got.value.field, got.value.reason) == (written(parts), "required field missing")


@given(parts=PATHS)
def test_field_paths_read_back_into_their_parts(parts):
    jsonpath = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
    assert configfile.field_path(jsonpath) == (written(parts), parts)


class Nested(msgspec.Struct):
    inner: tuple["Nested", ...] = ()


def test_a_document_that_contains_itself_is_refused():
    # What a YAML alias can make: a mapping inside itself.
    data: dict = {}
    data["inner"] = [data]
    with pytest.raises(ConfigError, match=r"^doc: the document nests too deeply \(or contains itself\)$"):
        configfile.convert(data, Nested, "doc")


# ---- the three formats ----

SCALARS = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
# TOML has no null, and its documents are tables.
DOCUMENTS = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
    st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=10), inner,
                                   max_size=4), max_leaves=12),
    max_size=5)


def toml_value(value: Any) -> str:
    """value in TOML, inline (msgspec's TOML encoder needs a package this one does without)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = "".join(c if " " <= c <= "~" and c not in '"\\' else
                          f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}" for c in value)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@given(data=DOCUMENTS)
def test_the_three_formats_decode_the_same_document(data):
    texts = {
        "yaml": yaml.safe_dump(data),  # non-ASCII escaped: its emitter folds some of it (U+0085) as line breaks
        "toml": "".join(f"{toml_value(k)} = {toml_value(v)}\n" for k, v in data.items()),
        "json": msgspec.json.encode(data).decode(),
    }
    for fmt, text in texts.items():
        assert configfile.decode(text, fmt, "doc", "policy") == data, fmt
        assert configfile.decode(text.encode(), fmt, "doc", "policy") == data, fmt


@given(key=KEYS, depth=st.integers(0, 3))
def test_a_key_given_twice_is_refused_in_every_format(key, depth):
    quoted = toml_value(key)  # a double-quoted string YAML reads too, astral escapes included
    json_text = f"{{{json.dumps(key)}: 1, {json.dumps(key)}: 2}}"
    yaml_text = f"{quoted}: 1\n{quoted}: 2\n"
    for _ in range(depth):
        json_text = f'{{"outer": {json_text}}}'
        yaml_text = "outer:\n" + "".join(f"  {line}\n" for line in yaml_text.splitlines())
    toml_text = (f"[{'.'.join(['outer'] * depth)}]\n" if depth else "") + f"{quoted} = 1\n{quoted} = 2\n"
    with pytest.raises(ConfigError, match=re.escape(f"JSON error: duplicate key {key!r}")):
        configfile.decode(json_text, "json", "doc", "policy")
    with pytest.raises(ConfigError, match=re.escape(f"found duplicate key {key!r}")):
        configfile.decode(yaml_text, "yaml", "doc", "policy")
    with pytest.raises(ConfigError, match=r"^doc: TOML syntax error: "):
        configfile.decode(toml_text, "toml", "doc", "policy")


@given(data=DOCUMENTS)
def test_a_json_error_is_placed_by_line_and_column_not_byte(data):
    # The stray x is on the last line, after two spaces, past text of any width.
    text = "[" + json.dumps(data, indent=2, ensure_ascii=False) + ",\n  x]"
    with pytest.raises(ConfigError) as got:
        configfile.decode(text, "json", "doc", "policy")
    assert got.value.reason == f"JSON syntax error: JSON is malformed: invalid character (line {text.count(chr(10)) + 1}, column 3)"


@given(raw=st.binary(min_size=1).filter(lambda b: not _is_utf8(b)), what=st.sampled_from(["policy", "tuning"]))
def test_bytes_that_are_not_utf8_are_refused_saying_where(raw, what):
    error = None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        error = e
    with pytest.raises(ConfigError) as got:
        configfile.decode(raw, "yaml", "doc", what)
    assert got.value.reason == f"the {what} is not UTF-8 text: {error.reason} at byte {error.start}"


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(data=st.one_of(st.none(), st.lists(st.integers()), st.integers(), st.text()))
def test_a_document_that_is_not_a_mapping_is_refused_whole(data):
    with pytest.raises(ConfigError) as got:
        configfile.mapping(data, "doc", "tuning")
    kind = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
    assert (got.value.field, got.value.reason) == ("", f"the tuning document is {kind}")


def test_an_unknown_format_is_refused():
    with pytest.raises(ConfigError, match=r"^doc: unknown policy format 'ini' \(expected yaml, toml or json\)$"):
        configfile.decode("a = 1", "ini", "doc", "policy")


@given(stem=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/."), min_size=1),
       extension=st.sampled_from(sorted(configfile.EXTENSIONS)), upper=st.booleans())
def test_the_format_comes_from_the_extension_in_any_case(stem, extension, upper):
    name = "/etc/" + stem + (extension.upper() if upper else extension)
    assert configfile.format_from_name(name) == configfile.EXTENSIONS[extension]


@given(name=st.sampled_from(["policy", "policy.ini", "policy.yaml.bak", ".yaml"]))
def test_a_name_without_a_known_extension_is_refused(name):
    with pytest.raises(ConfigError, match=r"cannot tell the format from the file name"):
        configfile.format_from_name(name)


def test_a_file_that_cannot_be_read_is_refused_saying_why(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/missing.yaml: cannot read the tuning: No such file"):
        configfile.read(tmp_path / "missing.yaml", "tuning")


# ---- lines ----

# A tree of mappings, each key on its own line: a leaf is None.
TREES = st.recursive(st.none(), lambda inner: st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
                                                                 inner, min_size=1, max_size=4), max_leaves=15)


def render(tree: dict, indent: int = 0, lines: list | None = None, at: tuple = (),
           found: dict | None = None) -> tuple[str, dict]:
    """YAML text for tree, and the line of every path in it."""
    lines = [] if lines is None else lines
    found = {} if found is None else found
    for key, value in tree.items():
        lines.append(" " * indent + f"{key}:" + (" 1" if value is None else ""))
        found[at + (key,)] = len(lines)
        if value is not None:
            render(value, indent + 2, lines, at + (key,), found)
    return "\n".join(lines) + "\n", found


@given(tree=TREES.filter(lambda t: isinstance(t, dict)), missing=st.from_regex(r"[A-Z]{3}", fullmatch=True))
def test_a_field_is_found_on_its_line_or_its_deepest_existing_part(tree, missing):
    text, found = render(tree)
    for path, line in found.items():
        assert configfile.line_of(text, ".".join(path)) == line
        assert configfile.line_of(text, ".".join(path + (missing,))) == line
    assert configfile.line_of(text, missing) is None


def test_an_item_of_a_list_is_found_on_its_line():
    text = "rules:\n  reverse_shell:\n    exceptions:\n      - executable: [a]\n      - executable: [b]\n"
    assert configfile.line_of(text, "rules.reverse_shell.exceptions[1]") == 5
    assert configfile.line_of(text, "rules.reverse_shell.exceptions[7]") == 3


# ---- the error ----

@given(field=st.one_of(st.just(""), KEYS), reason=st.text(min_size=1), line=st.one_of(st.none(), st.integers(1, 10**6)))
def test_an_error_pickles_and_says_where(field, reason, line):
    error = ConfigError(field, reason, "doc.yaml", line)
    again = pickle.loads(pickle.dumps(error))
    assert (again.field, again.reason, again.source, again.line) == (field, reason, "doc.yaml", line)
    where = f"doc.yaml, line {line}" if line else "doc.yaml"
    assert str(again) == (f"{where}: {field}: {reason}" if field else f"{where}: {reason}")
