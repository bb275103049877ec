"""Paging input from outside: cursors and offsets never reach SQL out of range."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delidev.errors import InvalidArgument
from delidev.services.common import (
    ITEM_CHARS,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    decode_cursor,
    encode_cursor,
    fitting,
    page_bounds,
)

T = TypeVar("T")


def _outcome(call: Callable[..., T], *args: Any) -> T | InvalidArgument:
    try:
        return call(*args)
    except InvalidArgument as error:
        return error


def _cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.builds(_cursor_of, st.text(max_size=40)),
        st.builds(lambda n: _cursor_of(f"offset:{n}"), st.integers()),
    )
)
def test_a_cursor_is_a_position_in_range_or_invalid_argument(cursor: str) -> None:
    got = _outcome(decode_cursor, cursor, "page_token")
    if isinstance(got, InvalidArgument):  # the same words whatever came: nothing echoed
        assert (got.field, got.message) == (
            "page_token",
            "page_token is not a cursor this server issued",
        )
    else:
        assert 0 <= got < MAX_OFFSET


@given(st.integers(min_value=0, max_value=MAX_OFFSET - 1))
def test_cursors_round_trip(offset: int) -> None:
    assert decode_cursor(encode_cursor(offset), "after") == offset


@given(st.integers(), st.integers())
def test_page_bounds_keep_offset_plus_limit_in_64_bits(limit: int, offset: int) -> None:
    got = _outcome(page_bounds, limit, offset)
    if isinstance(got, InvalidArgument):
        assert got.field in ("limit", "offset")
        return
    got_limit, got_offset = got
    assert 0 < got_limit <= MAX_PAGE_SIZE
    assert 0 <= got_offset <= MAX_OFFSET
    assert got_offset + got_limit < 2**63


@pytest.mark.parametrize("offset", [2**31 - 1, 2**31, 2**63, 2**64])
def test_offsets_past_the_int32_range_are_refused(offset: int) -> None:
    if offset <= MAX_OFFSET:
        assert page_bounds(10, offset) == (10, offset)
        return
    with pytest.raises(InvalidArgument, match="offset must be between 0 and 2147483647"):
        page_bounds(10, offset)


@given(
    st.lists(st.integers(min_value=0, max_value=400_000), max_size=60),
    st.integers(min_value=0, max_value=3_000_000),
)
def test_a_page_holds_the_leading_items_that_fit_and_at_least_one(
    weights: list[int], budget: int
) -> None:
    kept = fitting(weights, budget)
    spent = [ITEM_CHARS + w for w in weights]
    if not weights:
        assert kept == 0
        return
    assert 1 <= kept <= len(weights)
    assert kept == 1 or sum(spent[:kept]) <= budget  # within the budget, or one item alone
    assert kept == len(weights) or sum(spent[: kept + 1]) > budget  # the next did not fit
