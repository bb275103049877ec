"""The sessionLog fast path's plans and its cache of encoded messages are bounded.

Regressions: a document naming ``data`` under many aliases was served by the fast path,
past the document limits (40 aliases: 40 copies of the log in every message, 838 MB sent
for a 4 MB log), long documents were kept as cache keys, and the encoded messages kept
had no bound on their size. The end-to-end comparison with graphql-core's own answers is
``tests/e2e/test_live.py``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from delidev import models as m
from delidev.graphql import log_fast_path
from delidev.graphql.schema import build_schema
from delidev.services import live
from delidev.settings import Settings

PLAIN = 'subscription { log: sessionLog(sessionId: "x") { offset data next: nextOffset } }'


@pytest.fixture(scope="module")
def schema() -> Any:
    return build_schema(Settings.from_env({"DELIDEV_SINGLE_USER_MODE": "true"}))._schema


def test_plain_documents_get_a_plan(schema: Any) -> None:
    plan = log_fast_path.log_plan(schema, PLAIN, None)
    assert plan is not None
    assert plan.fields == (("offset", "offset"), ("data", "data"), ("next", "nextOffset"))


@pytest.mark.parametrize(
    "document",
    [
        'subscription { sessionLog(sessionId: "x") { data again: data } }',
        'subscription { sessionLog(sessionId: "x") { '
        + " ".join(f"d{i}: data" for i in range(40))
        + " } }",
        'subscription { sessionLog(sessionId: "x") { offset at: offset } }',
    ],
)
def test_a_field_asked_twice_takes_the_ordinary_path(schema: Any, document: str) -> None:
    assert log_fast_path.log_plan(schema, document, None) is None


def test_long_documents_and_names_are_neither_planned_nor_kept(schema: Any) -> None:
    before = log_fast_path._log_plan.cache_info().currsize
    padded = PLAIN + " " * 1_000_000
    assert log_fast_path.log_plan(schema, padded, None) is None
    assert log_fast_path.log_plan(schema, PLAIN, "S" * 10_000) is None
    assert log_fast_path._log_plan.cache_info().currsize == before


def test_the_encoded_messages_kept_are_bounded_in_size(
    schema: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_fast_path, "_MESSAGES", {})
    monkeypatch.setattr(log_fast_path, "_messages_chars", 0)
    plan = log_fast_path.log_plan(schema, PLAIN, None)
    assert plan is not None
    session = uuid.uuid4()
    piece_chars = 500_000
    for i in range(40):
        piece = live.LogPiece(
            offset=i * piece_chars,
            data="é" * piece_chars,  # escaped in JSON: six characters each
            status=m.AgentSessionStatus.RUNNING,
            next_offset=(i + 1) * piece_chars,
        )
        text, _ = log_fast_path._next_message(plan, session, piece)
        assert text.startswith('{"type":"next","payload":')
        kept = sum(len(t) for t, _ in log_fast_path._MESSAGES.values())
        assert kept == log_fast_path._messages_chars
        assert kept <= max(log_fast_path._MESSAGES_CHARS, len(text))
    assert len(log_fast_path._MESSAGES) < 40
