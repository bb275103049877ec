"""Bounds the nesting of JSON text before any parser sees it.

Written by hand because no library does this check without parsing: protobuf-py's native
JSON parser recurses once per level and overflows the C stack (SIGSEGV, the process is
gone) on ``[[[[…`` a few thousand levels deep, and the other parsers either recurse too or
build the whole structure first. The check is linear in the text: strings are cut out with
one regular expression and the depth is a running sum over the brackets that remain.
"""

from __future__ import annotations

import itertools
import re

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted from outside; the API needs less than 10."""

# A string (the last one may be unterminated); written "unrolled" so that the runs of plain
# characters are matched in one step (12 times faster on text-heavy bodies).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_BLOCK = 65_536
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class TooDeep(ValueError):
    """JSON text nests arrays and objects deeper than allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nests deeper than {limit} levels")
        self.limit = limit


def strip_strings(data: bytes | bytearray | str) -> bytes:
    """JSON text with its strings cut out (what is left is structure and scalars)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    return _STRING.sub(b"", raw) if b'"' in raw else raw


def _depths(data: bytes | bytearray | str) -> tuple[bytes, int]:
    return _NOT_BRACKET.sub(b"", strip_strings(data)), 0


def json_depth(data: bytes | bytearray | str) -> int:
    """Deepest nesting of arrays and objects in ``data`` (0 for a scalar); linear time.

    Malformed text gets a depth too (unbalanced closers count down): the caller's parser
    reports the syntax error, this only says whether parsing is safe.
    """
    brackets, _ = _depths(data)
    if not brackets:
        return 0
    return max(0, max(itertools.accumulate(map(_STEP.__getitem__, brackets))))


def check_json_depth(data: bytes | bytearray | str, limit: int = MAX_JSON_DEPTH) -> None:
    """Raises ``TooDeep`` when ``data`` nests deeper than ``limit``.

    Cheap for ordinary bodies (fewer opening brackets than the limit cannot nest deeper),
    and a deep body is refused within its first block of brackets.
    """
    if isinstance(data, str):
        opening = data.count("[") + data.count("{")
    else:
        opening = data.count(b"[") + data.count(b"{")
    if opening <= limit:
        return
    brackets, depth = _depths(data)
    for start in range(0, len(brackets), _BLOCK):
        block = brackets[start : start + _BLOCK]
        sums = list(itertools.accumulate(map(_STEP.__getitem__, block), initial=depth))
        if max(sums) > limit:
            raise TooDeep(limit)
        depth = sums[-1]
