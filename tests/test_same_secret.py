"""Secrets from outside are compared in constant time, whatever characters they hold."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from delidev.services.common import same_secret


@given(st.text(), st.text())
def test_any_text_compares_without_error(a: str, b: str) -> None:
    assert same_secret(a, b) == (a == b)
    assert same_secret(a, a)


def test_non_ascii_and_lone_surrogates() -> None:
    assert not same_secret("t\u00f6ken", "token")
    assert same_secret("\ud800", "\ud800")
    assert not same_secret("\ud800", "\ud801")
