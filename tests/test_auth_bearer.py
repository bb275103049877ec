"""The one parser of ``Authorization: Bearer`` headers, and what the authenticator refuses.

Workers' credentials go through the same parser: their refusals are in
``tests/connect/test_worker_service.py``.
"""

from __future__ import annotations

import pytest

from delidev.auth.authenticator import Authenticator, bearer_token
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import Unauthenticated
from delidev.settings import Settings

REFUSED = "authentication required: send Authorization: Bearer <token>"

MALFORMED = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer    ",
    "Basic dXNlcjpwYXNz",
    "Bearertok",
    " Bearer tok",  # the scheme comes first
    "Bearer\ttok",  # one space separates scheme and token
    "Token tok",
]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer tok", "tok"),
        ("bearer tok", "tok"),
        ("BEARER tok", "tok"),
        ("Bearer   tok  ", "tok"),
        ("Bearer tok\t", "tok"),
        ("Bearer a b", "a b"),  # the rest of the header, not its first word
    ],
)
def test_the_token_is_read_in_any_case_and_trimmed(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", MALFORMED)
def test_a_missing_or_malformed_header_has_no_token(header: str | None) -> None:
    assert bearer_token(header) is None


def _multi_user() -> Settings:
    return Settings(database_url="sqlite://unused", single_user_mode=False)


@pytest.mark.parametrize("header", MALFORMED)
async def test_the_authenticator_refuses_a_malformed_header(header: str | None) -> None:
    seen: list[str] = []

    async def verify(token: str) -> Principal:
        seen.append(token)
        return LOCAL_USER

    with pytest.raises(Unauthenticated) as info:
        await Authenticator(_multi_user(), verify).authenticate(header)
    assert str(info.value) == REFUSED
    assert seen == []


async def test_the_authenticator_verifies_the_parsed_token() -> None:
    seen: list[str] = []

    async def verify(token: str) -> Principal:
        seen.append(token)
        return LOCAL_USER

    assert await Authenticator(_multi_user(), verify).authenticate("bearer  tok ") is LOCAL_USER
    assert seen == ["tok"]


async def test_single_user_mode_reads_no_header() -> None:
    single = Settings(database_url="sqlite://unused", single_user_mode=True)
    assert await Authenticator(single).authenticate("Basic x") is LOCAL_USER
