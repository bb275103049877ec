"""Hypothesis strategies for Connect request bodies, derived from the protobuf-py descriptors.

For any request message (``DescMessage``) this builds what a client could send, valid-ish and
hostile, for both codecs:
- JSON: an object keyed by JSON or proto field names; each value follows the field's type
  (scalars in and out of range, int64 as strings, NaN and Infinity, enums by name, by number
  and unknown, base64 and broken base64, nested messages, lists, maps, oneofs with zero, one
  or two members set), then hostile variations: a wrong JSON type for a field, unknown
  fields, lone surrogates, NUL, deep nesting (bounded by ``bounds``), a body that is
  not an object, not JSON or not UTF-8.
- Binary: protobuf wire format written field by field from the descriptor (so values the
  Python runtime would refuse to encode can be sent: invalid UTF-8 in strings, 10-byte
  varints, wrong wire types, unknown tags, truncated lengths, groups), plus random bytes.

Hand-written: no library derives hostile wire data from protobuf-py descriptors (the
Google-protobuf ones, e.g. hypothesis-protobuf, target another runtime and valid values).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from hypothesis import strategies as st
from protobuf import (
    DescEnum,
    DescField,
    DescFieldValueEnum,
    DescFieldValueList,
    DescFieldValueMap,
    DescFieldValueMessage,
    DescFieldValueScalar,
    DescMessage,
    ScalarType,
)

from tests.fuzz import bounds

MAX_MESSAGE_DEPTH = 3
"""Nested messages are generated this deep (the schema's own recursion, not hostile nesting)."""

INT_RANGES: dict[ScalarType, tuple[int, int]] = {
    ScalarType.INT32: (-(2**31), 2**31 - 1),
    ScalarType.SINT32: (-(2**31), 2**31 - 1),
    ScalarType.SFIXED32: (-(2**31), 2**31 - 1),
    ScalarType.UINT32: (0, 2**32 - 1),
    ScalarType.FIXED32: (0, 2**32 - 1),
    ScalarType.INT64: (-(2**63), 2**63 - 1),
    ScalarType.SINT64: (-(2**63), 2**63 - 1),
    ScalarType.SFIXED64: (-(2**63), 2**63 - 1),
    ScalarType.UINT64: (0, 2**64 - 1),
    ScalarType.FIXED64: (0, 2**64 - 1),
}
INT64_TYPES = frozenset(
    {
        ScalarType.INT64,
        ScalarType.SINT64,
        ScalarType.SFIXED64,
        ScalarType.UINT64,
        ScalarType.FIXED64,
    }
)

# Text: ordinary, then the characters that break things (NUL, lone surrogates, newlines that
# forge log lines, right-to-left marks, emoji, combining marks), and long values.
HOSTILE_CHARS = [
    "\x00",
    "\ud800",
    "\udfff",
    "\n",
    "\r\n",
    "\u202e",
    "😀",
    "e\u0301",
    "'",
    '"',
    "\\",
]
hostile_text = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec=None), max_size=20),  # lone surrogates included
    st.lists(st.sampled_from(HOSTILE_CHARS), min_size=1, max_size=8).map("".join),
    st.sampled_from(
        [
            "",
            " ",
            "null",
            "'; DROP TABLE workspace; --",
            "../../../etc/passwd",
            "${jndi:ldap://x}",
            "{{7*7}}",
            "%s%s%n",
            "\nCRITICAL forged log line",
            "https://github.com/acme/repo.git",
            "http://127.0.0.1:9/",
            "00000000-0000-0000-0000-000000000000",
        ]
    ),
    st.integers(256, 20_000).map(lambda n: "x" * n),  # long: over any column, under any body limit
    # page tokens of the shape the server hands out, holding offsets it never would
    st.one_of(st.integers(), st.sampled_from([2**63, -1, 2**64])).map(
        lambda n: base64.urlsafe_b64encode(f"offset:{n}".encode()).decode().rstrip("=")
    ),
)


def _int_values(scalar: ScalarType) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[scalar]
    return st.one_of(
        st.integers(low, high),
        st.sampled_from([0, -1, 1, low, high, 2**31, 2**63, 2**64, -(2**63) - 1]),
        st.integers(),  # arbitrary size, far out of range
    )


class Values:
    """Strategies for the values of one request; ``ids`` are strings worth trying where a
    field holds an id (the ids of rows that exist, for the caller and for someone else)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        id_like = st.sampled_from(self.ids) if self.ids else st.nothing()
        self.id_text = st.one_of(id_like, id_like, st.uuids().map(str), hostile_text)
        self.text = st.one_of(hostile_text, hostile_text, id_like)

    # JSON --------------------------------------------------------------------------------

    def json_body(self, desc: DescMessage) -> st.SearchStrategy[bytes]:
        """Bytes of a JSON request body for ``desc``: mostly objects, some not."""
        obj = self.json_message(desc, MAX_MESSAGE_DEPTH)
        return st.one_of(
            obj.map(_dumps),
            obj.map(_dumps),
            obj.map(_dumps),
            st.tuples(obj, _hostile_json_extras()).map(lambda p: _dumps({**p[0], **p[1]})),
            any_json(8).map(_dumps),
            deep_nesting().map(str.encode),
            st.binary(max_size=64),
            obj.map(_dumps).flatmap(_mangle_json_bytes),
        )

    def json_message(self, desc: DescMessage, depth: int) -> st.SearchStrategy[dict[str, Any]]:
        parts: list[st.SearchStrategy[dict[str, Any]]] = []
        for member in desc.fields:
            if getattr(member.value, "oneof", None) is not None:
                continue
            parts.append(_optional_key(self._json_key(member), self.json_field(member, depth)))
        for oneof in desc.oneofs:
            if getattr(oneof, "proto", None) is not None and _synthetic(oneof):
                for member in oneof.fields:
                    parts.append(
                        _optional_key(self._json_key(member), self.json_field(member, depth))
                    )
                continue
            members = list(oneof.fields)
            parts.append(
                st.lists(
                    st.sampled_from(members), max_size=2, unique_by=lambda f: f.number
                ).flatmap(partial(self._json_members, depth=depth))
            )
        if not parts:
            return st.just({})
        return st.tuples(*parts).map(_merge)

    def _json_members(
        self, members: list[DescField], depth: int
    ) -> st.SearchStrategy[dict[str, Any]]:
        """Members of one oneof, all set (more than one is a bad request)."""
        pairs = (st.tuples(self._json_key(f), self.json_field(f, depth)) for f in members)
        return st.tuples(*pairs).map(dict)

    def _json_key(self, member: DescField) -> st.SearchStrategy[str]:
        return st.sampled_from(sorted({member.json_name, member.name}))

    def json_field(self, member: DescField, depth: int) -> st.SearchStrategy[Any]:
        value = member.value
        wrong = any_json(3)
        if isinstance(value, DescFieldValueList):
            element = (
                self.id_text
                if value.element == ScalarType.STRING and _names_an_id(member)
                else self._json_element(value.element, depth)
            )
            return st.one_of(st.lists(element, max_size=4), wrong)
        if isinstance(value, DescFieldValueMap):
            keys = self._json_map_key(value.key)
            values = self._json_element(value.value, depth)
            return st.one_of(st.dictionaries(keys, values, max_size=4), wrong)
        if isinstance(value, DescFieldValueMessage):
            return st.one_of(self._json_element(value.message, depth), wrong)
        if isinstance(value, DescFieldValueEnum):
            return st.one_of(self._json_element(value.enum, depth), wrong)
        assert isinstance(value, DescFieldValueScalar)
        if value.scalar == ScalarType.STRING and _names_an_id(member):
            return st.one_of(self.id_text, self.id_text, wrong)
        element = self._json_element(value.scalar, depth)
        return st.one_of(element, element, wrong)

    def _json_element(
        self, element: DescMessage | DescEnum | ScalarType, depth: int
    ) -> st.SearchStrategy[Any]:
        if isinstance(element, DescMessage):
            if depth <= 0:
                return st.just({})
            return self.json_message(element, depth - 1)
        if isinstance(element, DescEnum):
            names = [v.name for v in element.values]
            numbers = [v.number for v in element.values]
            return st.one_of(
                st.sampled_from(names),
                st.sampled_from(numbers),
                st.sampled_from([9999, -1, 2**31, "NOT_A_VALUE", "", "0", 1.5]),
            )
        return self._json_scalar(element)

    def _json_scalar(self, scalar: ScalarType) -> st.SearchStrategy[Any]:
        if scalar == ScalarType.STRING:
            return self.text
        if scalar == ScalarType.BOOL:
            return st.one_of(st.booleans(), st.sampled_from(["true", 0, 1, "yes"]))
        if scalar == ScalarType.BYTES:
            return st.one_of(
                st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
                st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
                st.sampled_from(["!!!", "a", "ab=", "====", "\x00"]),
            )
        if scalar in (ScalarType.DOUBLE, ScalarType.FLOAT):
            return st.one_of(
                st.floats(allow_nan=False, allow_infinity=False),
                st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "0x10", " 1"]),
                st.integers(),
            )
        ints = _int_values(scalar)
        return st.one_of(
            ints,
            ints.map(str),  # int64 travels as a string in proto3 JSON; others accept it too
            st.sampled_from([1.5, 1e20, -0.0, "1e3", "NaN", "", " 7", "0x10", True]),
        )

    def _json_map_key(self, key: ScalarType) -> st.SearchStrategy[str]:
        if key == ScalarType.STRING:
            return self.text
        if key == ScalarType.BOOL:
            return st.sampled_from(["true", "false", "1", "yes"])
        return st.one_of(_int_values(key).map(str), st.text(max_size=5))

    # Boundary values ---------------------------------------------------------------------

    def boundary_bodies(self, desc: DescMessage, codec: str) -> list[bytes]:
        """One body per theme, every field of the message set: real ids in id fields, and
        in the others the theme's value (long text, NUL, a lone surrogate, a forged log
        line, out-of-range numbers, an unknown enum number, the wrong type). Random inputs
        rarely set every field at once; these run first, in every run."""
        encode = self._boundary_json if codec == "json" else self._boundary_wire
        return [encode(desc, theme, MAX_MESSAGE_DEPTH) for theme in THEMES]

    def _boundary_value(self, member: DescField, element: Any, theme: str) -> Any:
        if element == ScalarType.STRING:
            if _names_an_id(member) and theme != "wrong_type":
                return self.ids[0] if self.ids else "00000000-0000-0000-0000-000000000000"
            return THEME_TEXT.get(theme, "fuzz")
        if isinstance(element, DescEnum):
            return 9999 if theme in ("unknown_enum", "huge_int") else element.values[-1].number
        if element == ScalarType.BOOL:
            return True
        if element in (ScalarType.DOUBLE, ScalarType.FLOAT):
            return {"huge_int": 1e308, "negative": -1.0}.get(theme, 1.0)
        if element == ScalarType.BYTES:
            return b"\xff" * (300 if theme == "long" else 1)
        if isinstance(element, ScalarType):
            low, high = INT_RANGES[element]
            return {"huge_int": high + 1, "negative": low - 1 if low else -1}.get(theme, 1)
        raise TypeError(element)

    def _boundary_json(self, desc: DescMessage, theme: str, depth: int) -> bytes:
        return _dumps(self._boundary_object(desc, theme, depth))

    def _boundary_object(self, desc: DescMessage, theme: str, depth: int) -> dict[str, Any]:
        body: dict[str, Any] = {}
        seen_oneofs: set[str] = set()
        for member in desc.fields:
            value = member.value
            oneof = getattr(value, "oneof", None)
            if oneof is not None and not _synthetic(oneof):
                if oneof.name in seen_oneofs:
                    continue
                seen_oneofs.add(oneof.name)
            if theme == "wrong_type":
                body[member.json_name] = {"fuzz": [1]}
                continue
            body[member.json_name] = self._boundary_json_value(member, value, theme, depth)
        return body

    def _boundary_json_value(self, member: DescField, value: Any, theme: str, depth: int) -> Any:
        if isinstance(value, DescFieldValueList):
            return [self._boundary_json_element(member, value.element, theme, depth)]
        if isinstance(value, DescFieldValueMap):
            key = "k" if value.key == ScalarType.STRING else "1"
            return {key: self._boundary_json_element(member, value.value, theme, depth)}
        if isinstance(value, DescFieldValueMessage):
            return self._boundary_json_element(member, value.message, theme, depth)
        if isinstance(value, DescFieldValueEnum):
            return self._boundary_json_element(member, value.enum, theme, depth)
        return self._boundary_json_element(member, value.scalar, theme, depth)

    def _boundary_json_element(
        self, member: DescField, element: Any, theme: str, depth: int
    ) -> Any:
        if isinstance(element, DescMessage):
            return self._boundary_object(element, theme, depth - 1) if depth > 0 else {}
        value = self._boundary_value(member, element, theme)
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        if isinstance(value, int) and not isinstance(value, bool) and element in INT64_TYPES:
            return str(value)
        return value

    def _boundary_wire(self, desc: DescMessage, theme: str, depth: int) -> bytes:
        out = b""
        for member in desc.fields:
            value = member.value
            number = member.number
            if theme == "wrong_type":
                out += _tag(number, 5) + b"\xff\xff\xff\xff"
                continue
            if isinstance(value, DescFieldValueMap):
                key = self._boundary_wire_element(member, 1, value.key, theme, depth)
                item = self._boundary_wire_element(member, 2, value.value, theme, depth)
                out += _len_field(number, key + item)
                continue
            element = (
                value.element
                if isinstance(value, DescFieldValueList)
                else value.message
                if isinstance(value, DescFieldValueMessage)
                else value.enum
                if isinstance(value, DescFieldValueEnum)
                else value.scalar
            )
            out += self._boundary_wire_element(member, number, element, theme, depth)
        return out

    def _boundary_wire_element(
        self, member: DescField, number: int, element: Any, theme: str, depth: int
    ) -> bytes:
        if isinstance(element, DescMessage):
            inner = self._boundary_wire(element, theme, depth - 1) if depth > 0 else b""
            return _len_field(number, inner)
        value = self._boundary_value(member, element, theme)
        if isinstance(value, str):
            return _len_field(number, value.encode("utf-8", "surrogatepass"))
        if isinstance(value, bytes):
            return _len_field(number, value)
        if isinstance(value, float):
            if element == ScalarType.FLOAT:
                return _tag(number, 5) + struct.pack("<f", max(min(value, 3e38), -3e38))
            return _tag(number, 1) + struct.pack("<d", value)
        if element in (ScalarType.FIXED32, ScalarType.SFIXED32):
            return _tag(number, 5) + (int(value) & 0xFFFFFFFF).to_bytes(4, "little")
        if element in (ScalarType.FIXED64, ScalarType.SFIXED64):
            return _tag(number, 1) + (int(value) & (2**64 - 1)).to_bytes(8, "little")
        if element in (ScalarType.SINT32, ScalarType.SINT64):
            return _varint_field(number, _zigzag(int(value)))
        return _varint_field(number, int(value))

    # Binary ------------------------------------------------------------------------------

    def binary_body(self, desc: DescMessage) -> st.SearchStrategy[bytes]:
        """Bytes of a binary request body for ``desc``: wire format from the descriptor."""
        msg = self.wire_message(desc, MAX_MESSAGE_DEPTH)
        return st.one_of(
            msg,
            msg,
            msg,
            st.tuples(msg, _hostile_wire()).map(lambda p: p[0] + p[1]),
            msg.flatmap(_mangle_wire),
            st.binary(max_size=128),
            deep_wire_nesting(desc),
        )

    def wire_message(self, desc: DescMessage, depth: int) -> st.SearchStrategy[bytes]:
        fields = list(desc.fields)
        if not fields:
            return st.just(b"")
        return st.lists(st.sampled_from(fields), max_size=2 * len(fields) + 1).flatmap(
            lambda chosen: st.tuples(*(self.wire_field(f, depth) for f in chosen)).map(b"".join)
        )

    def wire_field(self, member: DescField, depth: int) -> st.SearchStrategy[bytes]:
        value = member.value
        number = member.number
        if isinstance(value, DescFieldValueList):
            one = self._wire_element(number, value.element, depth)
            packed = self._wire_packed(number, value.element)
            return st.one_of(st.lists(one, max_size=4).map(b"".join), packed)
        if isinstance(value, DescFieldValueMap):
            entry_key = self._wire_element(1, value.key, depth)
            entry_value = self._wire_element(2, value.value, depth)
            entry = st.tuples(entry_key, entry_value, st.booleans()).map(
                lambda p: p[0] + p[1] if p[2] else p[1] + p[0]
            )
            return st.lists(entry, max_size=3).map(
                lambda entries: b"".join(_len_field(number, e) for e in entries)
            )
        if isinstance(value, DescFieldValueMessage):
            return self._wire_element(number, value.message, depth)
        if isinstance(value, DescFieldValueEnum):
            return self._wire_element(number, value.enum, depth)
        assert isinstance(value, DescFieldValueScalar)
        if value.scalar == ScalarType.STRING and _names_an_id(member):
            ids = self.id_text.map(lambda s: s.encode("utf-8", "surrogatepass"))
            return st.one_of(ids.map(lambda b: _len_field(number, b)), _wrong_wire(number))
        return self._wire_element(number, value.scalar, depth)

    def _wire_element(
        self, number: int, element: DescMessage | DescEnum | ScalarType, depth: int
    ) -> st.SearchStrategy[bytes]:
        wrong_type = _wrong_wire(number)
        if isinstance(element, DescMessage):
            inner = self.wire_message(element, depth - 1) if depth > 0 else st.just(b"")
            return st.one_of(inner.map(lambda b: _len_field(number, b)), wrong_type)
        if isinstance(element, DescEnum):
            numbers = [v.number for v in element.values]
            values = st.one_of(st.sampled_from(numbers), st.integers(-(2**63), 2**64 - 1))
            return st.one_of(values.map(lambda v: _varint_field(number, v)), wrong_type)
        if element == ScalarType.STRING:
            text = self.text.map(lambda s: s.encode("utf-8", "surrogatepass"))
            raw = st.one_of(text, text, st.binary(max_size=32))  # invalid UTF-8 too
            return st.one_of(raw.map(lambda b: _len_field(number, b)), wrong_type)
        if element == ScalarType.BYTES:
            return st.one_of(
                st.binary(max_size=64).map(lambda b: _len_field(number, b)), wrong_type
            )
        if element == ScalarType.BOOL:
            return st.one_of(
                st.sampled_from([0, 1, 2, 2**64 - 1]).map(lambda v: _varint_field(number, v)),
                wrong_type,
            )
        if element == ScalarType.DOUBLE:
            return st.one_of(
                st.floats().map(lambda f: _tag(number, 1) + struct.pack("<d", f)), wrong_type
            )
        if element == ScalarType.FLOAT:
            return st.one_of(
                st.floats(width=32).map(lambda f: _tag(number, 5) + struct.pack("<f", f)),
                wrong_type,
            )
        if element in (ScalarType.FIXED32, ScalarType.SFIXED32):
            return st.one_of(
                st.binary(min_size=4, max_size=4).map(lambda b: _tag(number, 5) + b), wrong_type
            )
        if element in (ScalarType.FIXED64, ScalarType.SFIXED64):
            return st.one_of(
                st.binary(min_size=8, max_size=8).map(lambda b: _tag(number, 1) + b), wrong_type
            )
        zigzag = element in (ScalarType.SINT32, ScalarType.SINT64)
        values = st.one_of(_int_values(element), st.integers(-(2**63), 2**64 - 1))
        encode: Callable[[int], bytes] = (
            (lambda v: _varint_field(number, _zigzag(v)))
            if zigzag
            else (lambda v: _varint_field(number, v))
        )
        return st.one_of(values.map(encode), wrong_type)

    def _wire_packed(
        self, number: int, element: DescMessage | DescEnum | ScalarType
    ) -> st.SearchStrategy[bytes]:
        if isinstance(element, DescMessage) or element in (ScalarType.STRING, ScalarType.BYTES):
            return st.binary(max_size=16).map(lambda b: _len_field(number, b))
        return st.lists(st.integers(0, 2**64 - 1), max_size=6).map(
            lambda vs: _len_field(number, b"".join(_varint(v) for v in vs))
        )


# JSON helpers ----------------------------------------------------------------------------


THEMES = (
    "long",
    "nul",
    "surrogate",
    "newline",
    "huge_int",
    "negative",
    "unknown_enum",
    "wrong_type",
)
THEME_TEXT = {
    "long": "x" * 300,  # over the 255 characters of most columns
    "nul": "a\x00b",
    "surrogate": "\ud800",
    "newline": "a\nCRITICAL forged log line",
}


def _names_an_id(member: DescField) -> bool:
    """A string field that holds ids (``task_id``, ``repository_ids``): mostly real ids,
    so the input reaches the service; other strings get mostly hostile text."""
    return member.name.endswith(("_id", "_ids"))


def _synthetic(oneof: Any) -> bool:
    """A proto3 ``optional`` field sits in a synthetic oneof of its own."""
    members = list(oneof.fields)
    return len(members) == 1 and bool(getattr(members[0].proto, "proto3_optional", False))


def _optional_key(
    key: st.SearchStrategy[str], value: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(st.just({}), st.tuples(key, value).map(lambda kv: {kv[0]: kv[1]}))


def _merge(parts: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def any_json(depth: int) -> st.SearchStrategy[Any]:
    """Any JSON value, nested at most ``depth`` levels."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(codec=None), max_size=10),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=depth * 3,
    )


def _hostile_json_extras() -> st.SearchStrategy[dict[str, Any]]:
    """Unknown fields and odd keys to add to an otherwise fine object."""
    return st.dictionaries(
        st.one_of(st.text(st.characters(codec=None), max_size=8), st.just("@type")),
        any_json(3),
        min_size=1,
        max_size=3,
    )


def deep_nesting(cap: int = bounds.MAX_JSON_NESTING) -> st.SearchStrategy[str]:
    """Arrays or objects nested deeper than any parser should follow, up to ``cap``."""
    depth = st.integers(min_value=min(cap, 64), max_value=cap)
    return st.one_of(
        depth.map(lambda n: "[" * n + "]" * n),
        depth.map(lambda n: '{"a":' * n + "1" + "}" * n),
        depth.map(lambda n: '{"name":' + "[" * n + "]" * n + "}"),
    )


def _dumps(value: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \ud800 escapes: valid JSON text, hostile content
    return json.dumps(value, allow_nan=True).encode()


def _mangle_json_bytes(body: bytes) -> st.SearchStrategy[bytes]:
    """A body broken on the way: truncated, a byte replaced, invalid UTF-8 inserted, bare
    NaN/Infinity tokens, a huge number, a duplicated key."""
    size = max(len(body), 1)
    return st.one_of(
        st.integers(0, size).map(lambda n: body[:n]),
        st.tuples(st.integers(0, size - 1), st.integers(0, 255)).map(
            lambda p: body[: p[0]] + bytes([p[1]]) + body[p[0] + 1 :]
        ),
        st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"]).map(
            lambda junk: body[:1] + junk + body[1:]
        ),
        st.just(b'{"limit": NaN, "offset": Infinity}'),
        st.just(b'{"limit": 1' + b"0" * 400 + b"}"),
        st.just(b'{"limit": 1e400}'),
        st.just(body.replace(b"{", b'{"x":1,"x":2,', 1) if body.startswith(b"{") else body),
        st.just(b"\xef\xbb\xbf" + body),  # UTF-8 byte order mark
    )


# Wire-format helpers ---------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative ints travel as ten-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(value: int) -> int:
    value = max(min(value, 2**63 - 1), -(2**63))
    return ((value << 1) ^ (value >> 63)) & ((1 << 64) - 1)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _varint_field(number: int, value: int) -> bytes:
    return _tag(number, 0) + _varint(value)


def _len_field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _wrong_wire(number: int) -> st.SearchStrategy[bytes]:
    """The field's number with any wire type and a payload that may not fit it."""
    return st.one_of(
        st.integers(0, 2**64 - 1).map(lambda v: _varint_field(number, v)),
        st.binary(max_size=16).map(lambda b: _len_field(number, b)),
        st.binary(min_size=4, max_size=4).map(lambda b: _tag(number, 5) + b),
        st.binary(min_size=8, max_size=8).map(lambda b: _tag(number, 1) + b),
        st.just(_tag(number, 3) + _tag(number, 4)),  # an empty group
        st.sampled_from([6, 7]).map(lambda wt: _tag(number, wt)),  # wire types that do not exist
    )


def _hostile_wire() -> st.SearchStrategy[bytes]:
    """Unknown fields, huge field numbers, a length far past the end, an 11-byte varint."""
    return st.one_of(
        st.tuples(st.integers(1, 2**29 - 1), st.binary(max_size=8)).map(
            lambda p: _len_field(p[0], p[1])
        ),
        st.just(_tag(1, 2) + _varint(2**31)),
        st.just(_tag(1, 2) + _varint(2**64 - 1)),
        st.just(_tag(1, 0) + b"\xff" * 10 + b"\x01"),
        st.just(b"\x00"),  # field number 0
        st.just(_tag(2**29 - 1, 0) + b"\x01"),
    )


def _mangle_wire(body: bytes) -> st.SearchStrategy[bytes]:
    size = max(len(body), 1)
    return st.one_of(
        st.integers(0, size).map(lambda n: body[:n]),
        st.tuples(st.integers(0, size - 1), st.integers(0, 255)).map(
            lambda p: body[: p[0]] + bytes([p[1]]) + body[p[0] + 1 :]
        ),
    )


def deep_wire_nesting(desc: DescMessage) -> st.SearchStrategy[bytes]:
    """A message field nested in itself far deeper than the schema allows (when the message
    has a message field), or an unknown length-delimited field nested the same way."""
    number = next((f.number for f in desc.fields if isinstance(f.value, DescFieldValueMessage)), 15)
    cap = bounds.MAX_WIRE_NESTING

    def nest(depth: int) -> bytes:
        body = b""
        for _ in range(depth):
            body = _len_field(number, body)
        return body

    return st.integers(min_value=min(cap, 64), max_value=cap).map(nest)
