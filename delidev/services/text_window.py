"""A log feed's window of recent text (``services/live.py``): appended at the end, cut at the
front, sliced anywhere, each in time proportional to the text it touches, not to the
window's size.

A ``str`` grown by concatenation copies the whole window on every append: up to 4 MB per
AppendLog for each followed session, 14 % of the server at 200 appends a second. Here the
appended texts are kept as they came, with their offsets, and joined only when a slice
spans several of them.
"""

from __future__ import annotations

from bisect import bisect_right


class TextWindow:
    """Text with offsets counted from its first character (which moves when the front is
    dropped)."""

    __slots__ = ("_origin", "_parts", "_size", "_starts")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._starts: list[int] = []  # of each part, on the internal scale
        self._origin = 0  # offset 0 of the window, on the internal scale
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, text: str) -> None:
        if text:
            self._starts.append(self._origin + self._size)
            self._parts.append(text)
            self._size += len(text)

    def clear(self) -> None:
        self._parts.clear()
        self._starts.clear()
        self._origin = 0
        self._size = 0

    def slice(self, start: int, stop: int) -> str:
        """``text[start:stop]`` for non-negative offsets (past the end: cut short)."""
        stop = min(stop, self._size)
        if start < 0 or start >= stop:
            return ""
        begin, end = self._origin + start, self._origin + stop
        index = bisect_right(self._starts, begin) - 1
        found: list[str] = []
        while begin < end:
            part, at = self._parts[index], self._starts[index]
            found.append(part[begin - at : end - at])
            begin = at + len(part)
            index += 1
        return found[0] if len(found) == 1 else "".join(found)

    def drop_front(self, count: int) -> None:
        """Forgets the first ``count`` characters (all of them, if there are fewer)."""
        count = min(max(count, 0), self._size)
        self._origin += count
        self._size -= count
        # Parts that end at or before the new origin go; one cut in the middle stays whole.
        keep = bisect_right(self._starts, self._origin) - 1
        if self._size == 0:
            self.clear()
        elif keep > 0:
            del self._parts[:keep]
            del self._starts[:keep]
