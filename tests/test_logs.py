"""The log formatter: whatever a value holds, a record is one line (its traceback aside), with
no control character and no value longer than the bound. The end-to-end proof against a real
server process is in ``tests/e2e/test_log_injection.py``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delidev import logs
from delidev.logs import JsonFormatter, SafeFormatter
from delidev.request_context import RequestInfo, handling
from delidev.settings import Settings, SettingsError

LIMIT = 100
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
formatter = SafeFormatter(max_value_chars=LIMIT)


def _record(
    msg: object, args: object = None, exc: BaseException | None = None
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("delidev.test", logging.ERROR, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]


def _raised(message: str) -> BaseException:
    try:
        try:
            raise KeyError(message)
        except KeyError as inner:
            raise ValueError(message) from inner
    except ValueError as outer:
        return outer


texts = st.text(max_size=400)  # any code point, lone surrogates included


@settings(max_examples=200, deadline=None)
@given(value=texts, other=texts)
def test_any_argument_gives_one_bounded_line(value: str, other: str) -> None:
    line = formatter.format(_record("state %s then %r and %d", (value, other, 7)))
    assert "\n" not in line
    assert not CONTROL.search(line)
    # Each value escaped (at most 6 characters per character) after it was cut to LIMIT.
    assert len(line) < 200 + 2 * (6 * LIMIT + 40)
    assert line.endswith(" and 7")


@settings(max_examples=100, deadline=None)
@given(value=texts)
def test_a_message_without_arguments_is_a_value_too(value: str) -> None:
    line = formatter.format(_record(value))
    assert "\n" not in line
    assert not CONTROL.search(line)
    assert len(line) < 200 + 6 * LIMIT + 40


@settings(max_examples=100, deadline=None)
@given(value=texts)
def test_exception_messages_cannot_add_lines(value: str) -> None:
    text = formatter.format(_record("unexpected error in %s", ("X/Y",), _raised(value)))
    lines = text.split("\n")
    assert not CONTROL.search(text.replace("\n", ""))
    # Every line is the record's own, a frame of the code, or one of the two exception
    # lines (the message of each escaped onto it).
    assert lines[0].endswith("ERROR delidev.test: unexpected error in X/Y")
    exception_lines = [line for line in lines[1:] if not line.startswith(("  ", "Traceback"))]
    assert [line.split(":", 1)[0] for line in exception_lines if line] == [
        "KeyError",
        "The above exception was the direct cause of the following exception",
        "ValueError",
    ]
    assert all(len(line) < 6 * LIMIT + 100 for line in exception_lines)


def test_a_forged_line_stays_on_the_real_one() -> None:
    forged = "x\n2026-12-04 09:00:00,000 CRITICAL delidev.app: database wiped\x1b[2J"
    line = formatter.format(_record("state %s", (forged,)))
    assert line.endswith(
        "state x\\n2026-12-04 09:00:00,000 CRITICAL delidev.app: database wiped\\x1b[2J"
    )


def test_a_huge_value_is_cut_and_says_so() -> None:
    line = formatter.format(_record("state %s", ("y" * 3_000_000,)))
    assert line.endswith("y" * LIMIT + f"…[{3_000_000 - LIMIT} more characters]")
    text = formatter.format(_record("boom", None, _raised("z" * 3_000_000)))
    assert len(text) < 4_000


def test_numbers_and_mappings_keep_their_formats() -> None:
    assert formatter.format(_record("%d items, %.1f s", (3, 2.25))).endswith("3 items, 2.2 s")
    assert formatter.format(_record("%(who)s left", ({"who": "a\nb"},))).endswith("a\\nb left")
    # A broken call is still one line, not an exception in the logging machinery.
    assert formatter.format(_record("%d", ("not a number\n",))).count("\n") == 0


def test_a_template_built_from_a_value_is_bounded_too() -> None:
    built = "state " + "q" * 1_000_000 + " %s"
    line = formatter.format(_record(built, ("\n",)))
    assert "\n" not in line
    assert len(line) < 200 + 6 * LIMIT + 40


def test_the_bounds_are_settings() -> None:
    env = {"DELIDEV_SINGLE_USER_MODE": "true"}
    read = Settings.from_env(
        {**env, "DELIDEV_LOG_MAX_VALUE_CHARS": "300", "DELIDEV_AUTH_MAX_TOKEN_CHARS": "8192"}
    )
    assert (read.log_max_value_chars, read.auth_max_token_chars) == (300, 8192)
    for var in ("DELIDEV_LOG_MAX_VALUE_CHARS", "DELIDEV_AUTH_MAX_TOKEN_CHARS"):
        with pytest.raises(SettingsError, match=var):
            Settings.from_env({**env, var: "10"})


@settings(max_examples=50, deadline=None)
@given(value=texts)
def test_every_line_can_be_written_as_utf8(value: str) -> None:
    text = formatter.format(_record("value %s", (value,), _raised(value)))
    text.encode("utf-8")  # a lone surrogate would fail here, and logging would dump the record


def test_a_broken_value_still_gives_a_line() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no\nway")

        __repr__ = __str__

    line = formatter.format(_record("value %s %r", (Broken(), Broken())))
    assert line.endswith("value <Broken: str() failed> <Broken: repr() failed>")


# --- Request ids in the text format, and the JSON format --------------------------------------

json_formatter = JsonFormatter(max_value_chars=LIMIT)
REQUEST_FIELDS = ("request_id", "trace_id", "principal", "rpc", "graphql", "status", "duration_ms")


def _info(**fields: object) -> RequestInfo:
    base: dict[str, object] = {
        "request_id": "rid-1",
        "trace_id": None,
        "kind": "http",
        "method": "POST",
        "path": "/graphql",
        "started": time.perf_counter(),
    }
    return RequestInfo(**{**base, **fields})  # type: ignore[arg-type]


def test_text_lines_carry_the_request_id_inside_a_request_only() -> None:
    outside = formatter.format(_record("hello %s", ("you",)))
    assert outside.endswith("ERROR delidev.test: hello you")
    with handling(_info(request_id="abc-123")):
        inside = formatter.format(_record("hello %s", ("you",)))
    assert inside.endswith("ERROR delidev.test [abc-123]: hello you")


def test_a_json_line_has_the_fields_and_null_request_fields_outside_a_request() -> None:
    line = json_formatter.format(_record("state %s", ("x",)))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "state x"
    assert (data["level"], data["logger"]) == ("ERROR", "delidev.test")
    when = dt.datetime.fromisoformat(data["time"])
    assert when.utcoffset() == dt.timedelta(0)
    assert all(data[name] is None for name in REQUEST_FIELDS)


def test_a_json_line_written_during_a_request_carries_its_fields() -> None:
    info = _info(
        request_id="abc",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        principal="worker:1",
        rpc="delidev.v1.WorkerService/GetTask",
        status=200,
    )
    with handling(info):
        data = json.loads(json_formatter.format(_record("claimed")))
    assert {k: data[k] for k in REQUEST_FIELDS if k != "duration_ms"} == {
        "request_id": "abc",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "principal": "worker:1",
        "rpc": "delidev.v1.WorkerService/GetTask",
        "graphql": None,
        "status": 200,
    }
    assert data["duration_ms"] >= 0


@settings(max_examples=200, deadline=None)
@given(value=texts, other=texts)
def test_any_value_gives_one_bounded_json_line(value: str, other: str) -> None:
    record = _record("state %s then %r", (value, other), _raised(value))
    record.extra_value = value  # what ``extra=`` adds: bounded too
    record.extra_object = [value]
    line = json_formatter.format(record)
    assert "\n" not in line
    assert not CONTROL.search(line)  # ensure_ascii: no raw control character or separator
    line.encode("utf-8")
    data = json.loads(line)
    assert not CONTROL.search(data["message"])  # escaped as in text: ``jq -r`` shows one line
    for key in ("extra_value", "extra_object"):
        assert len(data[key]) <= 6 * LIMIT + 40
    assert "Traceback" in data["exc_info"]
    assert all(len(part) < 6 * LIMIT + 100 for part in data["exc_info"].split("\n"))


def test_a_huge_value_is_cut_in_json_too() -> None:
    record = _record("state %s", ("y" * 3_000_000,), _raised("z" * 3_000_000))
    record.body = "w" * 3_000_000
    line = json_formatter.format(record)
    assert len(line) < 6_000
    data = json.loads(line)
    assert data["message"].endswith(f"…[{3_000_000 - LIMIT} more characters]")


def test_the_json_format_is_a_setting() -> None:
    env = {"DELIDEV_SINGLE_USER_MODE": "true"}
    assert Settings.from_env({**env, "DELIDEV_LOG_FORMAT": "json"}).log_format == "json"
    assert isinstance(logs.formatter("json", max_value_chars=300), JsonFormatter)
    assert isinstance(logs.formatter("text", max_value_chars=300), SafeFormatter)
    with pytest.raises(SettingsError, match="DELIDEV_LOG_FORMAT"):
        Settings.from_env({**env, "DELIDEV_LOG_FORMAT": "xml"})
