"""The reference worker's options, counters and the directives a prompt can carry."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TypeVar

from connectrpc.code import Code

from delidev.connect.gen.delidev.v1 import common_pb, task_pb
from delidev.worker_sim.usage import Spent

log = logging.getLogger("delidev.worker_sim")
S = task_pb.AgentSessionStatus
T = TypeVar("T")
# Worth another try: the server (or the way to it) is briefly down or overloaded. Any other
# refusal of a call about a job (a stale lease above all) ends that job.
TRANSIENT = {
    Code.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED,
    Code.RESOURCE_EXHAUSTED,
    Code.UNKNOWN,
    Code.INTERNAL,
}
# --agent-type values: claude_code, open_code, ...
AGENT_TYPES = {t.name.lower(): t for t in common_pb.AiAgentType if t.value}
_DIRECTIVE = re.compile(r"\[sim:([a-z-]+)(?:=([^\]]*))?\]")


# Text whose length differs in code points, UTF-16 units and bytes (client offset bugs).
UNICODE_LINE = (
    " emoji \U0001f600 caf\u00e9 e\u0301\u0301 \u4e2d\u6587"
    " \U0001f468\u200d\U0001f469\u200d\U0001f467 \u05e9\u05dc\u05d5\u05dd"
)


def directives(prompt: str) -> dict[str, str]:
    return {m.group(1): m.group(2) or "" for m in _DIRECTIVE.finditer(prompt)}


def plan_yaml(count: int) -> str:
    lines = ["tasks:"]
    for i in range(count):
        lines += [f"  - id: step-{i}", f"    title: Step {i}", f'    prompt: "Do step {i}"']
        if i:
            lines.append(f"    dependsOn: [step-{i - 1}]")
    return "\n".join(lines) + "\n"


@dataclass
class Options:
    server: str
    name: str = "sim"
    endpoint_url: str = "http://127.0.0.1:54872"
    registration_token: str = ""
    lines: int = 20
    lines_per_second: float = 200.0
    chunk_interval: float = 0.05
    plan_tasks: int = 3
    plan_text: str | None = None
    fail_rate: float = 0.0
    wait_ms: int = 5_000
    max_jobs: int = 0
    idle_exit: float = 0.0
    tty_answer_wait_ms: int = 25_000
    retry_base: float = 0.2
    """First back-off after a transient error, in seconds; it doubles up to ``retry_max``."""
    retry_max: float = 10.0
    job_call_attempts: int = 5
    """Tries of one call about a job before the job is given up."""
    poll: bool = False
    """Claim by long polling GetTask only (no Watch stream)."""
    agent_types: tuple[common_pb.AiAgentType, ...] = ()
    """AiAgentType values declared at Register (none = every type)."""
    labels: tuple[str, ...] = ()
    stream_timeout_ms: int = 300_000
    """A Watch stream is renewed this often (a fresh call, no back-off)."""
    usage: bool = False
    """Report usage as runs go (``[sim:usage]`` turns it on for one job, ``=off`` off)."""
    usage_model: str | None = None
    """The model every run bills; None: the task's model, else its agent type's default."""
    usage_every: int = 5
    """Lines written between usage reports."""


@dataclass
class Stats:
    sessions: list[str] = field(default_factory=list)
    succeeded: int = 0
    failed: int = 0
    stopped: int = 0
    refused: int = 0
    """Jobs the server took away (a call about them was refused) or whose report it refused."""
    abandoned: int = 0
    """Jobs given up after transient errors that did not pass."""
    errors: int = 0
    """Transient errors (retried)."""
    lines: int = 0
    pushed: int = 0
    """Jobs taken from the Watch stream."""
    polled: int = 0
    """Jobs taken from GetTask (with ``poll``, or while the stream was down)."""
    usage: dict[str, Spent] = field(default_factory=dict)
    """Per session: the usage reports the server answered (counted now or before)."""
