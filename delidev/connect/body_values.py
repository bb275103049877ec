"""A bound on the values a request body holds, counted before it is decoded.

Decoding costs about a microsecond per value, and protobuf-py's native decoders hold the
GIL (a thread does not help): a 4 MiB AppendLog of 2 million empty chunks held the event
loop for 2 s, the same in JSON for 1.3 s. So a body larger than ``SMALL_BODY`` bytes (a
smaller one cannot hold enough values to matter) is counted first, and refused past
``MAX_VALUES``:

- binary: the wire format is walked with the message's descriptor (fields, list entries,
  the fields of nested messages; a packed list counts a value per byte), stopping at the
  bound;
- JSON: with the strings cut out (``nesting.strip_strings``), every comma, ``{`` and ``[``
  counts.

Written by hand because no library counts protobuf wire values without decoding them. A
body that is malformed is left to the decoder, which reports it.
"""

from __future__ import annotations

import functools

from protobuf import DescEnum, DescFieldValueList, DescFieldValueMessage, DescMessage, ScalarType

SMALL_BODY = 16 * 1024
MAX_VALUES = 20_000
"""The largest request the API needs holds a few thousand (AppendLog: 1,000 chunks)."""

_PACKED = object()  # marks a packable list field: its entries come packed in one value
_UNPACKABLE = (ScalarType.STRING, ScalarType.BYTES)


@functools.cache
def _fields(desc: DescMessage) -> dict[int, object]:
    """Field number → the nested message type (length-delimited messages to walk into) or
    ``_PACKED``; other fields are not listed."""
    found: dict[int, object] = {}
    for field in desc.fields:
        value = field.value
        if isinstance(value, DescFieldValueMessage) and not value.delimited_encoding:
            found[field.number] = value.message
        elif isinstance(value, DescFieldValueList):
            if isinstance(value.element, DescMessage) and not value.delimited_encoding:
                found[field.number] = value.element
            elif isinstance(value.element, DescEnum) or value.element not in _UNPACKABLE:
                found[field.number] = _PACKED  # numbers, booleans and enums may come packed
    return found


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]  # IndexError past the end: malformed
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def binary_values_within(data: bytes | bytearray, desc: DescMessage, limit: int) -> bool:
    """Whether the protobuf wire data of a ``desc`` message holds at most ``limit`` values
    (True also for malformed data: the decoder reports that)."""
    count = 0
    stack = [(memoryview(data), desc)]
    try:
        while stack:
            view, message = stack.pop()
            nested = _fields(message)
            pos, end = 0, len(view)
            while pos < end:
                tag, pos = _varint(view, pos)
                count += 1
                if count > limit:
                    return False
                wire = tag & 7
                if wire == 0:
                    _, pos = _varint(view, pos)
                elif wire == 1:
                    pos += 8
                elif wire == 5:
                    pos += 4
                elif wire == 2:
                    length, pos = _varint(view, pos)
                    inner = nested.get(tag >> 3)
                    if inner is _PACKED:
                        count += length
                        if count > limit:
                            return False
                    elif isinstance(inner, DescMessage):
                        stack.append((view[pos : pos + length], inner))
                    pos += length
                elif wire not in (3, 4):  # groups' start and end tags count as values
                    return True
    except (IndexError, ValueError):
        return True
    return True


def json_values_within(structure: bytes, limit: int) -> bool:
    """Whether JSON text, its strings cut out (``nesting.strip_strings``), holds at most
    ``limit`` values in its arrays and objects (about: every separator and opening bracket
    counts)."""
    return structure.count(b",") + structure.count(b"{") + structure.count(b"[") <= limit
