"""Log lines a request cannot forge or bloat.

Values logged by this package and by the libraries under it (uvicorn, Tortoise, the Connect
runtime) can come from a request: a path, an OIDC ``state``, an exception whose message
quotes a bad value. ``SafeFormatter`` writes every record as one line of its own: control
characters (newline, CR, ESC, NUL…) in the message, in each argument and in exception
messages are escaped (``\\n``, ``\\x1b``), and each argument and exception message is cut to
``max_value_chars`` characters with a note of how much was left out. Tracebacks keep their
structure (the frames come from the code, not the request): only the exception messages in
them are escaped and cut.

Two formats (``DELIDEV_LOG_FORMAT``):

- ``text`` (the default): ``SafeFormatter``, the format this server always wrote, with
  ``[<request id>]`` after the logger's name on records written while a request is handled.
  Hand-written: the escaping and bounds are the point, and no library keeps a plain-text
  format while adding them.
- ``json``: ``JsonFormatter``, one JSON object per line: ``time`` (ISO 8601, UTC), ``level``,
  ``logger``, ``message`` and the request's fields (``request_id``, ``trace_id``,
  ``principal``, ``rpc``, ``graphql``, ``status``, ``duration_ms``; null outside a request,
  see ``delidev/request_context.py``), then any ``extra`` fields and ``exc_info``. The
  encoding is python-json-logger's: its encoder already handles what records carry
  (datetimes, exceptions, enums, bytes, unknown objects) and its extras merge skips the
  ``LogRecord`` internals, which a hand-written encoder would have to keep in step with each
  Python release. The same guarantees hold: the message and each traceback are built as in
  ``text`` (escaped, bounded; ``jq -r .message`` cannot print a forged line either), every
  other string value is bounded, and ``ensure_ascii`` leaves no raw control character,
  line separator or lone surrogate in the line.
"""

from __future__ import annotations

import datetime as dt
import logging
import numbers
import re
import textwrap
import traceback
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from delidev import request_context

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMAT_IN_REQUEST = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# C0 and C1 control characters, DEL, the Unicode line and paragraph separators (which some
# log viewers break lines at), and lone surrogates (a JSON string may hold one; the stream
# could not encode it, and logging would print the whole record to stderr as an error).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MAX_CHAIN = 10  # exceptions shown of one cause / context chain


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def escape(text: str) -> str:
    """``text`` with every control character written as an escape sequence."""
    return _CONTROL.sub(_escape_char, text)


def bound(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more characters]"


def clean(text: str, limit: int) -> str:
    """Cut first, so that escaping a huge value does not cost a pass over all of it."""
    return escape(bound(text, limit))


class _Shown:
    """An argument as ``%s`` and ``%r`` show it, escaped and bounded."""

    __slots__ = ("_limit", "_value")

    def __init__(self, value: object, limit: int) -> None:
        self._value = value
        self._limit = limit

    def __str__(self) -> str:
        return clean(_text(str, self._value), self._limit)

    def __repr__(self) -> str:
        return clean(_text(repr, self._value), self._limit)


def _text(show: Callable[[object], str], value: object) -> str:
    # A broken __str__ must not turn the record into logging's own error report, which
    # prints the message and its arguments to stderr unescaped.
    try:
        return show(value)
    except Exception:
        return f"<{type(value).__name__}: {show.__name__}() failed>"


def _shown(value: object, limit: int) -> object:
    # Numbers stay themselves, so that %d and %.2f keep working; they cannot carry text.
    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        return value
    return _Shown(value, limit)


class SafeFormatter(logging.Formatter):
    """Writes each record as one line (plus a traceback whose messages are escaped)."""

    def __init__(
        self,
        fmt: str = LOG_FORMAT,
        *,
        max_value_chars: int,
        fmt_in_request: str = LOG_FORMAT_IN_REQUEST,
    ) -> None:
        super().__init__(fmt)
        self.max_value_chars = max_value_chars
        self._in_request = logging.PercentStyle(fmt_in_request)

    def format(self, record: logging.LogRecord) -> str:
        safe = safe_record(record, self)
        info = request_context.current()
        if info is not None and not hasattr(safe, "request_id"):
            safe.request_id = info.request_id
        return super().format(safe)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        if getattr(record, "request_id", None):
            return self._in_request.format(record)
        return super().formatMessage(record)

    def _message(self, record: logging.LogRecord) -> str:
        limit = self.max_value_chars
        args = record.args
        # The template may itself be a value (``log.info(text)``, an f-string): bounded too.
        template = bound(_text(str, record.msg), limit)
        if not args:
            return escape(template)
        shown: tuple[object, ...] | Mapping[str, object]
        if isinstance(args, Mapping):
            shown = {key: _shown(value, limit) for key, value in args.items()}
        else:
            shown = tuple(_shown(value, limit) for value in args)
        try:
            message = template % shown
        except Exception:  # a bad format string: still a line, not logging's error report
            message = f"{template} {shown!r}"
        # The template comes from the code; escaping once more covers one built at run time.
        return escape(message)

    def _traceback(self, error: BaseException) -> str:
        """The traceback as Python prints it, each exception message escaped and bounded."""
        parts: list[str] = []
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
            seen.add(id(current))
            parts.append(self._one(current, current.__traceback__))
            cause = current.__cause__
            if cause is not None:
                parts.append(
                    "\nThe above exception was the direct cause of the following exception:\n\n"
                )
                current = cause
            elif current.__context__ is not None and not current.__suppress_context__:
                parts.append(
                    "\nDuring handling of the above exception, another exception occurred:\n\n"
                )
                current = current.__context__
            else:
                current = None
        # Python prints the innermost cause first.
        return "".join(reversed(parts)).rstrip("\n")

    def _one(self, error: BaseException, tb: TracebackType | None) -> str:
        frames = "".join(traceback.format_tb(tb)) if tb is not None else ""
        kind = type(error)
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__"):
            name = f"{kind.__module__}.{name}"
        text = _text(str, error)
        line = f"{name}: {clean(text, self.max_value_chars)}" if text else name
        notes: Any = getattr(error, "__notes__", None)
        if isinstance(notes, list | tuple):
            line += "".join(f"\n{clean(str(n), self.max_value_chars)}" for n in notes)
        head = "Traceback (most recent call last):\n" if frames else ""
        text = f"{head}{frames}{line}\n"
        if isinstance(error, BaseExceptionGroup):
            for number, member in enumerate(error.exceptions[:_MAX_CHAIN], 1):
                shown = textwrap.indent(self._traceback(member), "  | ")
                text += f"  +---------------- {number} ----------------\n{shown}\n"
        return text


def safe_record(record: logging.LogRecord, formatter: SafeFormatter) -> logging.LogRecord:
    """A copy of ``record`` whose message and traceback are escaped and bounded."""
    safe = logging.makeLogRecord(record.__dict__)
    safe.msg = formatter._message(record)
    safe.args = None
    safe.exc_text = None
    if record.exc_info and record.exc_info[1] is not None:
        safe.exc_text = formatter._traceback(record.exc_info[1])
    safe.exc_info = None  # stack_info stays: it holds frames of the code only
    return safe


_SCALARS = (bool, int, float, type(None))
# Fields built here or already checked (request and trace ids are validated when read,
# the principal is ours): not bounded again, which would cost a pass over each per record.
_OWN_FIELDS = frozenset(
    {"time", "level", "logger", "message", "exc_info", "request_id", "trace_id", "principal"}
)


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per record (see the module docstring)."""

    def __init__(self, *, max_value_chars: int) -> None:
        super().__init__(json_ensure_ascii=True)
        self.max_value_chars = max_value_chars
        self._safe = SafeFormatter(max_value_chars=max_value_chars)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(safe_record(record, self._safe))

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        info = request_context.current()
        log_data.update(
            time=dt.datetime.fromtimestamp(record.created, tz=dt.UTC),
            level=record.levelname,
            logger=record.name,
            message=record.getMessage(),
            request_id=info.request_id if info else None,
            trace_id=info.trace_id if info else None,
            principal=info.principal if info else None,
            rpc=info.rpc if info else None,
            graphql=info.graphql if info else None,
            status=info.status if info else None,
            duration_ms=info.elapsed_ms() if info else None,
        )
        # ``extra`` fields (they may override the request's: the access line's final
        # duration) and the traceback, as the library merges them.
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        limit = self.max_value_chars
        log_data.pop("color_message", None)  # uvicorn's message again, with terminal colours
        for key, value in log_data.items():
            if key in _OWN_FIELDS or isinstance(value, _SCALARS):
                continue
            # An extra field may hold a request's value: bounded (and escaped, so that
            # ``jq -r`` prints it on one line); an object is shown as text.
            log_data[key] = clean(_text(str, value), limit)
        return log_data


def formatter(log_format: str, *, max_value_chars: int) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(max_value_chars=max_value_chars)
    return SafeFormatter(max_value_chars=max_value_chars)


def not_a_wire_trace(record: logging.LogRecord) -> bool:
    """False for the ``websockets`` library's DEBUG traces of what crossed the wire (uvicorn
    passes its own logger to it): every header of a WebSocket upgrade (``Authorization``,
    ``Cookie``) and the start of every frame (a ``connection_init`` with its token, a TTY
    answer), each ``< ...`` or ``> ...``. Nothing else of the server's looks like them."""
    return not (
        record.levelno <= logging.DEBUG
        and isinstance(record.msg, str)
        and record.msg.startswith(("< ", "> "))
    )


def install(*, level: str, max_value_chars: int, log_format: str = "text") -> None:
    """Sends every record to stderr, one line each, in ``log_format`` (text or json)."""
    handler = logging.StreamHandler()
    handler.addFilter(not_a_wire_trace)
    handler.setFormatter(formatter(log_format, max_value_chars=max_value_chars))
    logging.basicConfig(level=level.upper(), handlers=[handler])
