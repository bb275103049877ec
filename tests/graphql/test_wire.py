"""The decoder every GraphQL body and WebSocket message goes through: it accepts any JSON
a client may send, in either encoding of its strings, and refuses what the server cannot
hold with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delidev.graphql import wire

# High surrogates included (Hypothesis leaves surrogates out by default): a client's
# "\\ud800". Low ones are left out: next to a high one they would make a pair.
CHARACTERS = st.characters(exclude_categories=()).filter(lambda c: not 0xDC00 <= ord(c) <= 0xDFFF)
TEXT = st.text(CHARACTERS, max_size=8)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def _has_surrogate(value: Any) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(value, ensure_ascii=False))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(VALUES, st.booleans(), st.booleans())
def test_json_round_trips_unless_it_holds_a_lone_surrogate(
    value: Any, ascii_only: bool, as_bytes: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    data: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    if _has_surrogate(value):
        # Escaped, it decodes to a lone surrogate; raw, its bytes are not UTF-8.
        with pytest.raises(wire.BadJSON, match=r"valid Unicode|not valid UTF-8"):
            wire.decode(data)
    else:
        assert wire.decode(data) == value


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff", "not valid UTF-8"),
        (b'"\xed\xa0\x80"', "not valid UTF-8"),  # a surrogate encoded as UTF-8 bytes
        ("[" * 65 + "]" * 65, "nests deeper than 64"),
        ("NaN", "finite"),
        ("[-Infinity]", "finite"),
        ('{"x": 1e400}', "finite"),
        ('{"x": "\\udc00"}', "valid Unicode"),
        ('{"\\ud800": 1}', "valid Unicode"),
        ("{", "not valid JSON"),
        ('{"x": ' + "9" * 5000 + "}", "at most 4300 digits"),  # int() would raise ValueError
        ("-" + "1" * 4301, "at most 4300 digits"),
    ],
)
def test_what_is_refused_and_why(data: str | bytes, reason: str) -> None:
    with pytest.raises(wire.BadJSON, match=reason):
        wire.decode(data)


def test_a_surrogate_pair_is_a_character() -> None:
    assert wire.decode('"\\ud83d\\ude00"') == "😀"


@pytest.mark.parametrize(
    ("message", "protocol", "problem"),
    [
        ([], "graphql-transport-ws", "must be a JSON object"),
        ({"type": "subscribe", "id": "1", "payload": "{ a }"}, "graphql-transport-ws", "payload"),
        ({"type": "start", "id": "1", "payload": {"query": 1}}, "graphql-ws", "string `query`"),
        ({"type": "start", "id": "1", "payload": {"query": "{ a }"}}, "graphql-transport-ws",
         "unknown message type"),
        ({"type": "stop"}, "graphql-ws", "string `id`"),
        ({"type": "connection_init", "payload": []}, "graphql-ws", "payload must be an object"),
    ],
)  # fmt: skip
def test_message_shapes(message: object, protocol: str, problem: str) -> None:
    found = wire.message_problem(message, protocol)
    assert found is not None
    assert problem in found
    assert len(found.encode()) <= 123  # a close reason


@pytest.mark.parametrize(
    ("message", "protocol"),
    [
        ({"type": "connection_init"}, "graphql-transport-ws"),
        ({"type": "ping", "payload": {"x": 1}}, "graphql-transport-ws"),
        ({"type": "subscribe", "id": "1", "payload": {"query": "{ a }", "variables": None}},
         "graphql-transport-ws"),
        ({"type": "complete", "id": "1"}, "graphql-transport-ws"),
        ({"type": "start", "id": "1", "payload": {"query": "{ a }", "operationName": "A"}},
         "graphql-ws"),
        ({"type": "connection_terminate"}, "graphql-ws"),
    ],
)  # fmt: skip
def test_well_formed_messages_pass(message: object, protocol: str) -> None:
    assert wire.message_problem(message, protocol) is None
