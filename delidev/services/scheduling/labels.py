"""Worker labels and a task's required labels: ``key=value`` strings, as Buildkite agent
tags and Hatchet worker labels are.

Stored sorted and deduplicated (a JSON list), so that "the worker has every label the task
requires" is a containment test the claim statement can run in SQL (``jsonb <@`` on
PostgreSQL, ``json_each`` on SQLite). One key has one value per label set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from delidev import models as m
from delidev.errors import InvalidArgument

MAX_LABELS = 32
MAX_KEY_CHARS = 63
MAX_VALUE_CHARS = 128
_KEY = re.compile(r"[a-z0-9](?:[a-z0-9._/-]{0,62})")
_VALUE = re.compile(r"[A-Za-z0-9._:/+-]{0,128}")


def parse_labels(values: Iterable[str], field: str) -> list[str]:
    """The canonical form of ``key=value`` labels: sorted, deduplicated, keys lower-case.

    Raises: InvalidArgument naming the label (bad form, a key given two values, too many).
    """
    by_key: dict[str, str] = {}
    for count, raw in enumerate(values, start=1):
        if count > MAX_LABELS:
            raise InvalidArgument(f"{field} holds more than {MAX_LABELS} labels", field=field)
        if not isinstance(raw, str):
            raise InvalidArgument(f"{field} must hold strings", field=field)
        key, sep, value = raw.strip().partition("=")
        key = key.strip().lower()
        value = value.strip()
        shown = raw[:80]
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise InvalidArgument(
                f"{field}: {shown!r} is not a label: write key=value, the key of lower-case "
                f"letters, digits and . _ / - (at most {MAX_KEY_CHARS}), the value of letters, "
                f"digits and . _ : / + - (at most {MAX_VALUE_CHARS})",
                field=field,
            )
        if by_key.get(key, value) != value:
            raise InvalidArgument(
                f"{field}: label {key!r} is given two values ({by_key[key]!r} and {value!r})",
                field=field,
            )
        by_key[key] = value
    return sorted(f"{key}={value}" for key, value in by_key.items())


def parse_agent_types(values: Iterable[str | m.AiAgentType], field: str) -> list[str]:
    """Agent types a worker can run, sorted and deduplicated (empty = every type).

    Raises: InvalidArgument naming an unknown type.
    """
    known = {t.value for t in m.AiAgentType}
    types: set[str] = set()
    for count, raw in enumerate(values, start=1):
        if count > len(known) * 4:
            raise InvalidArgument(f"{field} holds too many values", field=field)
        value = raw.value if isinstance(raw, m.AiAgentType) else str(raw)
        if value not in known:
            raise InvalidArgument(
                f"{field}: {value[:40]!r} is not an agent type (one of {', '.join(sorted(known))})",
                field=field,
            )
        types.add(value)
    return sorted(types)


def missing_labels(required: Iterable[str], offered: Iterable[str]) -> list[str]:
    """The required labels a worker with ``offered`` labels lacks (empty: it may run it)."""
    have = set(offered)
    return [label for label in required if label not in have]


def can_run(
    *,
    agent_type: str,
    required: Iterable[str],
    worker_types: Iterable[str],
    worker_labels: Iterable[str],
) -> bool:
    """Whether a worker with these agent types (empty = all) and labels may take a job."""
    types = list(worker_types)
    if types and agent_type not in types:
        return False
    return not missing_labels(required, worker_labels)
