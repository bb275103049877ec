"""Request codecs that refuse what they cannot read with invalid_argument and the field name.

JSON requests are strict: unknown fields and unknown enum names are refused, so that a
typo never passes silently as "not given". Their nesting is bounded before protobuf-py's
native parser sees them (it recurses once per level and overflows the C stack on a deep
body: the process dies); a binary body nests only as deep as the schema allows, and
protobuf-py refuses deeper groups itself (``RecursionError``), which is answered as any
malformed body is.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.codec import Codec
from connectrpc.errors import ConnectError
from protobuf import (
    DescEnum,
    DescFieldValueEnum,
    DescFieldValueList,
    DescFieldValueMessage,
    DescMessage,
    Message,
)

from delidev.connect.body_values import (
    MAX_VALUES,
    SMALL_BODY,
    binary_values_within,
    json_values_within,
)
from delidev.connect.gen.delidev.v1.common_pb import ErrorInfo
from delidev.errors import InvalidArgument
from delidev.nesting import MAX_JSON_DEPTH, TooDeep, check_json_depth, strip_strings

M = TypeVar("M", bound=Message[Any])

_FIELD_IN = re.compile(r"for field [\w.]+\.(\w+)")
_UNKNOWN_KEY = re.compile(r"key: '([^']*)' is unknown")
_BAD_ENUM = re.compile(r"cannot decode ([\w.]+) from JSON: (.*)$")


def _enum_field(desc: DescMessage, enum_name: str, payload: Any, bad: str, depth: int = 0) -> str:
    """Dotted name of the field of type ``enum_name`` that holds ``bad`` in ``payload``
    (the request's JSON), or of the first field of that type when none visibly does."""
    first = ""
    for field in desc.fields:
        value = field.value
        held = (
            payload.get(field.json_name, payload.get(field.name))
            if isinstance(payload, dict)
            else None
        )
        if isinstance(value, DescFieldValueEnum):
            enum: DescEnum | None = value.enum
        elif isinstance(value, DescFieldValueList) and isinstance(value.element, DescEnum):
            enum = value.element  # a list of enum values
        else:
            enum = None
        if enum is not None and enum.type_name == enum_name:
            if held == bad or (isinstance(held, list) and bad in held):
                return field.name
            first = first or field.name
        if isinstance(value, DescFieldValueMessage) and depth < 3:
            items = held if isinstance(held, list) else [held]
            for item in items:
                inner = _enum_field(value.message, enum_name, item, bad, depth + 1)
                if inner and (isinstance(item, dict) or not first):
                    return f"{field.name}.{inner}"
    return first


def _invalid(message: str, field: str = "") -> ConnectError:
    return ConnectError(
        Code.INVALID_ARGUMENT,
        message,
        details=[ErrorInfo(delidev_code=InvalidArgument.code, field=field)],
    )


def _too_many_values() -> ConnectError:
    return _invalid(f"request body holds more than {MAX_VALUES} values (fields and list entries)")


def _shown(name: str) -> str:
    """A name from the request, as an error message repeats it (cut when long)."""
    return name if len(name) <= 100 else name[:100] + "…"


def _json_error(exc: Exception, message_class: type[Message[Any]], data: bytes) -> ConnectError:
    text = str(exc)
    if match := _UNKNOWN_KEY.search(text):
        return _invalid(f"unknown field {_shown(match[1])!r}", _shown(match[1]))
    if match := _BAD_ENUM.search(text):
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        if field := _enum_field(message_class.desc(), match[1], payload, match[2]):
            return _invalid(f"{field} has an unknown value {_shown(match[2])!r}", field)
    if match := _FIELD_IN.search(text):
        field = match[1]
        kind = "out of range" if isinstance(exc, OverflowError) else "of the wrong type"
        return _invalid(f"{field} is {kind}", field)
    return _invalid(f"request body is not a valid JSON {message_class.desc().type_name}")


class StrictJSONCodec(Codec[Message[Any], Any]):
    def __init__(self, max_depth: int = MAX_JSON_DEPTH) -> None:
        self._max_depth = max_depth

    def name(self) -> str:
        return "json"

    def encode(self, message: Message[Any]) -> bytes:
        return message.to_json().encode()

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> M:
        # A large body's strings are cut out once, for both checks; its values are counted
        # first (a count is cheaper than the depth check on a body of a million brackets).
        structure: bytes | bytearray = data
        if len(data) > SMALL_BODY:
            structure = strip_strings(data)
            if not json_values_within(structure, MAX_VALUES):
                raise _too_many_values()
        try:
            check_json_depth(structure, self._max_depth)
        except TooDeep as exc:
            raise _invalid(
                f"request body nests arrays and objects deeper than {exc.limit} levels"
            ) from None
        try:
            return message_class.from_json(data, ignore_unknown_fields=False)
        except Exception as exc:
            raise _json_error(exc, message_class, bytes(data)) from None


class BinaryCodec(Codec[Message[Any], Any]):
    def name(self) -> str:
        return "proto"

    def encode(self, message: Message[Any]) -> bytes:
        return message.to_binary()

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> M:
        if len(data) > SMALL_BODY and not binary_values_within(
            data, message_class.desc(), MAX_VALUES
        ):
            raise _too_many_values()
        try:
            return message_class.from_binary(data)
        except Exception:  # also RecursionError: groups nested past protobuf-py's limit
            raise _invalid(
                f"request body is not a valid protobuf {message_class.desc().type_name}"
            ) from None


def server_codecs(*, max_json_depth: int = MAX_JSON_DEPTH) -> list[Codec[Any, Any]]:
    """The codecs every Connect app serves (``max_json_depth``: see ``Settings``)."""
    return [BinaryCodec(), StrictJSONCodec(max_json_depth)]
