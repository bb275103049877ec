"""JSON from outside, for GraphQL over HTTP and WebSocket: decoded safely or refused with a
reason, before anything else looks at it.

Python's ``json`` accepts what GraphQL clients must not send and what the rest of the
server cannot hold: nesting deep enough to exhaust the stack (checked first, in linear
time, by ``delidev.nesting``), bytes that are not UTF-8, ``NaN`` / ``Infinity`` and
numbers like ``1e400`` that overflow to infinity, and ``\\ud800`` escapes that decode to
lone surrogates, which no database and no UTF-8 encoder accepts. Each is refused here with
a ``BadJSON`` that names the problem (and never quotes the request).
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from delidev.nesting import MAX_JSON_DEPTH, TooDeep, check_json_depth

# A \uD800-\uDFFF escape (or, in text given as str, a surrogate itself): the value may
# hold a lone surrogate, checked after decoding.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_MAX_ID = 64
"""Longest operation id accepted on a WebSocket (graphql-ws clients send UUIDs or counters)."""
_TYPES = {
    "graphql-transport-ws": frozenset({"connection_init", "ping", "pong", "subscribe", "complete"}),
    "graphql-ws": frozenset({"connection_init", "connection_terminate", "start", "stop"}),
}


class BadJSON(ValueError):
    """JSON text the server refuses; the message is safe to send back."""


def _no_constant(name: str) -> Any:
    raise BadJSON(f"JSON numbers must be finite ({name} is not allowed)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON("JSON numbers must be finite (a number overflows a double)")
    return value


def _integer(text: str) -> int:
    # Python refuses to convert more digits than this (a guard against quadratic time):
    # a ValueError that is not a JSON error, which would have answered 500.
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        raise BadJSON(f"JSON integers may have at most {limit} digits")
    return int(text)


def decode(data: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> object:
    """The value of JSON text ``data``. Raises: BadJSON."""
    if isinstance(data, bytes | bytearray):
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadJSON("the body is not valid UTF-8") from None
    else:
        text = data
        raw = text.encode("utf-8", "surrogatepass")
    try:
        check_json_depth(raw, max_depth)
    except TooDeep as error:
        raise BadJSON(str(error)) from None
    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite, parse_int=_integer
        )
    except json.JSONDecodeError as error:
        raise BadJSON(f"not valid JSON: {error.msg} at position {error.pos}") from None
    except RecursionError:  # pragma: no cover  # the depth check comes first
        raise BadJSON(f"JSON nests deeper than {max_depth} levels") from None
    if _SURROGATE.search(raw) and _holds_lone_surrogate(value):
        raise BadJSON("JSON strings must be valid Unicode (a lone \\uD800-\\uDFFF escape)")
    return value


def _holds_lone_surrogate(value: object) -> bool:
    """Whether a string anywhere in ``value`` (keys included) holds a lone surrogate."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def message_problem(message: object, protocol: str) -> str | None:
    """Why a decoded WebSocket ``message`` is malformed for ``protocol``
    (``graphql-transport-ws`` or ``graphql-ws``), or None. Short: it becomes a close
    reason (at most 123 bytes)."""
    if not isinstance(message, dict):
        return "a message must be a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str):
        return "a message needs a string `type`"
    if kind not in _TYPES[protocol]:
        return f"unknown message type for {protocol}"
    starts = "subscribe" if protocol == "graphql-transport-ws" else "start"
    if kind in ("subscribe", "start", "complete", "stop"):
        op = message.get("id")
        if not isinstance(op, str) or not 0 < len(op) <= _MAX_ID:
            return f"a `{kind}` message needs a string `id` of 1 to {_MAX_ID} characters"
    if kind != starts:
        payload = message.get("payload")
        if kind == "connection_init" and not isinstance(payload, dict | None):
            return "the `connection_init` payload must be an object"
        return None
    payload = message.get("payload")
    if not isinstance(payload, dict):
        return f"the `{kind}` payload must be an object"
    if not isinstance(payload.get("query"), str):
        return f"the `{kind}` payload needs a string `query`"
    if not isinstance(payload.get("variables"), dict | None):
        return "`variables` must be an object or null"
    if not isinstance(payload.get("operationName"), str | None):
        return "`operationName` must be a string or null"
    if not isinstance(payload.get("extensions"), dict | None):
        return "`extensions` must be an object or null"
    return None
