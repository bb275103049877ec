"""Branch names of tasks (FACTS.md): an explicit name, else the repository's template,
else ``delidev/${taskId}``; sanitized to the characters a branch name may hold."""

from __future__ import annotations

import re
from uuid import UUID

from delidev.services.common import MAX_NAME_LENGTH

_BRANCH_CHARS = re.compile(r"[^A-Za-z0-9\-_/]")


def sanitize_branch(name: str) -> str:
    """FACTS.md: characters other than letters, digits, - _ / become -."""
    return _BRANCH_CHARS.sub("-", name.strip()).strip("/")[:MAX_NAME_LENGTH]


def _slug(text: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:40].rstrip("-") or "task"


def branch_name_for(
    *, task_id: UUID, explicit: str | None, template: str | None, title: str | None, prompt: str
) -> str:
    """FACTS.md: the explicit name, else the template, else ``delidev/${taskId}``.

    ``${taskId}`` is the whole task id: a prefix of it could name two tasks' branches alike.
    """
    if explicit:
        return sanitize_branch(explicit)
    if template:
        filled = template.replace("${taskId}", str(task_id))
        return sanitize_branch(filled.replace("${slug}", _slug(title or prompt)))
    return f"delidev/{task_id}"
