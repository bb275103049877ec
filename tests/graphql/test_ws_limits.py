"""The counting behind the WebSocket caps (``graphql/ws_limits.py``); the caps as a client
meets them are proven against a real server in ``tests/e2e/test_ws_limits.py``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from delidev.graphql.ws_limits import WsLimits


def test_a_user_past_the_per_user_limit_is_refused_and_others_are_not() -> None:
    limits = WsLimits(max_connections=10, max_subscriptions=5, max_per_user=2)
    assert limits.open("alice") is None
    assert limits.open("alice") is None
    refusal = limits.open("alice")
    assert refusal is not None
    assert "limit of 2 subscriptions" in refusal
    assert limits.open("bob") is None  # another user still gets in
    limits.close("alice")
    assert limits.open("alice") is None  # room again
    assert limits.subscriptions == 3


def test_without_a_per_user_limit_only_the_process_limit_counts() -> None:
    limits = WsLimits(max_connections=10, max_subscriptions=3, max_per_user=None)
    assert [limits.open("local") for _ in range(3)] == [None, None, None]
    refusal = limits.open("local")
    assert refusal is not None
    assert "limit of 3 subscriptions" in refusal


@given(
    st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c"])), max_size=200),
    st.integers(1, 6),
    st.integers(1, 4),
)
def test_the_counts_never_pass_the_limits_and_return_to_zero(
    steps: list[tuple[bool, str]], total: int, per_user: int
) -> None:
    limits = WsLimits(max_connections=1, max_subscriptions=total, max_per_user=per_user)
    held: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    for opening, user in steps:
        if opening:
            if limits.open(user) is None:
                held[user] += 1
        elif held[user]:
            limits.close(user)
            held[user] -= 1
        assert limits.subscriptions == sum(held.values()) <= total
        assert all(n <= per_user for n in held.values())
    for user, n in held.items():
        for _ in range(n):
            limits.close(user)
    assert limits.subscriptions == 0
    assert limits.connect() is None
    assert limits.connect() is not None
    limits.disconnect()
    assert limits.connect() is None


def test_one_address_holds_at_most_its_share_of_connections() -> None:
    limits = WsLimits(max_connections=3, max_subscriptions=1, max_per_user=None, max_per_address=2)
    assert [limits.connect("a"), limits.connect("a")] == [None, None]
    refused = limits.connect("a")
    assert refused is not None
    assert "your address holds the limit of 2" in refused
    assert limits.connect("b") is None
    full = limits.connect("c")
    assert full is not None
    assert "limit of 3 WebSocket connections" in full
    limits.disconnect("a")
    assert limits.connect("a") is None
    assert limits.connections == 3
