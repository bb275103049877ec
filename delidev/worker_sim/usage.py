"""Plausible usage for the reference worker's runs: tokens derived from what a run writes,
cost from a price table, integers throughout (money in micros, millionths of a US dollar).

A run is simulated as a conversation of turns, one turn per usage report (every
``--usage-every`` lines written, and once more for the rest before the run reports its end
or starts to wait). A turn covering ``n`` new lines of ``c`` characters:

- reads the conversation so far (``context``: every earlier turn's new and output tokens),
  90 % of it from the prompt cache (``cache_read``), the rest as plain ``input``, so input
  grows with the context;
- adds ``new`` tokens: the system prompt and the task's prompt on the first turn, and a tool
  result per line; they count as ``input`` and are written to the cache (``cache_write``)
  for the next turn;
- writes ``ceil(c / 4)`` output tokens (about four characters a token) plus some reasoning
  and a tool call per line.

It is deterministic (the same lines give the same usage) and imitates no provider's exact
accounting. The cost of a report is the cost of everything reported so far minus the cost
already reported, each rounded down to a micro, so rounding never adds up over many reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SYSTEM_TOKENS = 3_000
"""System prompt and tool definitions, read on the first turn."""
TOOL_RESULT_TOKENS = 40
"""Read per line written: the result of the tool call that produced it."""
OUTPUT_OVERHEAD_TOKENS = 12
"""Written per line besides the line itself: reasoning and the tool call."""
CACHE_HIT_PERCENT = 90


@dataclass(frozen=True, slots=True)
class Price:
    """USD micros per million tokens (so $3 per million tokens is 3_000_000)."""

    input: int
    output: int
    cache_read: int
    cache_write: int


# Public list prices per million tokens when this was written (USD), for a plausible
# simulation, not for billing: input, output, cache read, cache write. Providers that do not
# charge for writing to their cache have 0 there.
PRICES: dict[str, Price] = {
    "claude-opus-4": Price(15_000_000, 75_000_000, 1_500_000, 18_750_000),
    "claude-sonnet-4": Price(3_000_000, 15_000_000, 300_000, 3_750_000),
    "claude-haiku-3.5": Price(800_000, 4_000_000, 80_000, 1_000_000),
    "gpt-4.1": Price(2_000_000, 8_000_000, 500_000, 0),
    "gpt-5-codex": Price(1_250_000, 10_000_000, 125_000, 0),
    "gemini-2.5-pro": Price(1_250_000, 10_000_000, 310_000, 0),
}
# The model a run bills when neither ``--usage-model`` nor its task names one, per agent
# type (``--agent-type`` spelling). A model missing from PRICES is priced as its agent
# type's default (or claude-sonnet-4).
DEFAULT_MODELS: dict[str, str] = {
    "claude_code": "claude-sonnet-4",
    "open_code": "gpt-4.1",
    "gemini_cli": "gemini-2.5-pro",
    "codex_cli": "gpt-5-codex",
    "aider": "claude-sonnet-4",
    "amp": "claude-sonnet-4",
}
FALLBACK_MODEL = "claude-sonnet-4"


def default_model(agent_type: str) -> str:
    return DEFAULT_MODELS.get(agent_type, FALLBACK_MODEL)


def price_of(model: str, agent_type: str) -> Price:
    return PRICES.get(model) or PRICES[default_model(agent_type)]


@dataclass(frozen=True, slots=True)
class Spent:
    """Tokens and money, as reported (one report, or the sum of several)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_micros: int = 0
    reports: int = 0

    def __add__(self, other: Spent) -> Spent:
        return Spent(
            *(
                a + b
                for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
            )
        )

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def cost_micros(spent: Spent, price: Price) -> int:
    """What ``spent``'s tokens cost, rounded down to a micro."""
    return (
        spent.input_tokens * price.input
        + spent.output_tokens * price.output
        + spent.cache_read_tokens * price.cache_read
        + spent.cache_write_tokens * price.cache_write
    ) // 1_000_000


@dataclass(frozen=True, slots=True)
class Report:
    report_id: str
    model: str
    spent: Spent


class Meter:
    """Counts what one run writes and turns it into reports, one per turn (a turn every
    ``every`` lines)."""

    def __init__(
        self, *, session_id: str, model: str, agent_type: str, prompt: str, every: int = 5
    ) -> None:
        self.session_id, self.model, self.every = session_id, model, max(1, every)
        self.price = price_of(model, agent_type)
        self.prompt_tokens = -(-len(prompt) // 4)
        self.lines = 0
        self.chars = 0
        self.context = 0
        self.turns = 0
        self.reported = Spent()

    @property
    def due(self) -> bool:
        return self.lines >= self.every

    def wrote(self, text: str) -> None:
        self.lines += text.count("\n")
        self.chars += len(text)

    def next_report(self) -> Report | None:
        """The report of what was written since the last one (None: nothing was)."""
        if not self.lines and not self.chars:
            return None
        new = self.lines * TOOL_RESULT_TOKENS
        if not self.turns:
            new += SYSTEM_TOKENS + self.prompt_tokens
        cache_read = self.context * CACHE_HIT_PERCENT // 100
        output = -(-self.chars // 4) + self.lines * OUTPUT_OVERHEAD_TOKENS
        turn = Spent(
            input_tokens=self.context - cache_read + new,
            output_tokens=output,
            cache_read_tokens=cache_read,
            cache_write_tokens=new,
            reports=1,
        )
        total = self.reported + turn
        turn = dataclasses.replace(
            turn, cost_micros=cost_micros(total, self.price) - self.reported.cost_micros
        )
        self.reported += turn
        self.context += new + output
        self.turns += 1
        self.lines = self.chars = 0
        return Report(f"{self.session_id}-{self.turns}", self.model, turn)
