"""Labels, agent types and the retry policy: the rules claims and the sweep apply."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delidev.errors import InvalidArgument
from delidev.services.scheduling import labels, policy


def test_labels_are_canonical() -> None:
    assert labels.parse_labels([" OS=linux", "region=eu", "os=linux"], "labels") == [
        "os=linux",
        "region=eu",
    ]
    assert labels.parse_labels([], "labels") == []
    assert labels.parse_labels(["docker="], "labels") == ["docker="]


@pytest.mark.parametrize(
    "bad",
    ["noequals", "=value", "key=has space", "ke y=v", "k=v\u0000", "k" * 64 + "=v", "k=\u00e9"],
)
def test_malformed_labels_are_refused_by_name(bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        labels.parse_labels([bad], "required_labels")
    assert caught.value.field == "required_labels"
    assert "is not a label" in caught.value.message


def test_a_key_with_two_values_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="two values"):
        labels.parse_labels(["os=linux", "os=mac"], "labels")


def test_too_many_labels_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="more than 32"):
        labels.parse_labels([f"k{i}=v" for i in range(33)], "labels")


def test_agent_types() -> None:
    assert labels.parse_agent_types(["codex_cli", "claude_code", "codex_cli"], "t") == [
        "claude_code",
        "codex_cli",
    ]
    with pytest.raises(InvalidArgument, match="not an agent type"):
        labels.parse_agent_types(["vim"], "agent_types")


@given(st.lists(st.text(max_size=40), max_size=40))
def test_parse_labels_never_fails_otherwise(values: list[str]) -> None:
    """Any input is canonical labels or InvalidArgument, and canonical labels are a fixpoint."""
    try:
        parsed = labels.parse_labels(values, "labels")
    except InvalidArgument:
        return
    assert parsed == sorted(set(parsed))
    assert labels.parse_labels(parsed, "labels") == parsed


def test_can_run() -> None:
    assert labels.can_run(agent_type="aider", required=[], worker_types=[], worker_labels=[])
    assert not labels.can_run(
        agent_type="aider", required=[], worker_types=["codex_cli"], worker_labels=[]
    )
    assert labels.can_run(
        agent_type="aider",
        required=["os=linux"],
        worker_types=[],
        worker_labels=["a=b", "os=linux"],
    )
    assert not labels.can_run(
        agent_type="aider", required=["gpu=true"], worker_types=[], worker_labels=["os=linux"]
    )


def test_retry_policy_bounds_and_backs_off() -> None:
    rules = policy.RetryPolicy(
        max_attempts=3,
        backoff_base=dt.timedelta(seconds=10),
        backoff_max=dt.timedelta(seconds=25),
    )
    assert rules.retries(auto_retries=0)
    assert rules.retries(auto_retries=1)
    assert not rules.retries(auto_retries=2)  # the third run was the last
    rng = random.Random(7)
    first = rules.backoff(auto_retries=0, rng=rng)
    second = rules.backoff(auto_retries=1, rng=rng)
    capped = rules.backoff(auto_retries=10, rng=rng)
    assert dt.timedelta(seconds=5) <= first <= dt.timedelta(seconds=10)
    assert dt.timedelta(seconds=10) <= second <= dt.timedelta(seconds=20)
    assert dt.timedelta(seconds=12.5) <= capped <= dt.timedelta(seconds=25)
    assert policy.is_infrastructure_failure("out_of_memory")
    assert not policy.is_infrastructure_failure("agent_crashed")
    assert not policy.is_infrastructure_failure(None)
