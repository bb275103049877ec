"""The retry policy for infrastructure failures (Temporal-style: a bounded number of
attempts with exponential backoff and jitter).

Only failures of the machinery are retried on their own: the worker was lost, the
container did not start, the run ran out of memory. An agent's own failure (it crashed, it
timed out, anything else) waits for a person's Retry. Attempts stay as history: each retry
is a new session with ``auto_retries`` one higher; a person's Retry starts again at 0.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from delidev.settings import Settings

# FailureKind values (services/workers) that are the machinery's fault.
INFRASTRUCTURE_FAILURES = frozenset({"container_start", "out_of_memory"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    """Runs in a row that infrastructure failures may take (the first run included)."""
    backoff_base: dt.timedelta = dt.timedelta(seconds=10)
    backoff_max: dt.timedelta = dt.timedelta(minutes=10)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_auto_attempts,
            backoff_base=dt.timedelta(milliseconds=settings.retry_backoff_base_ms),
            backoff_max=dt.timedelta(milliseconds=settings.retry_backoff_max_ms),
        )

    def retries(self, *, auto_retries: int) -> bool:
        """Whether a run that was automatic retry number ``auto_retries`` (0 = not a retry)
        may be followed by another after an infrastructure failure."""
        return auto_retries + 1 < self.max_attempts

    def backoff(self, *, auto_retries: int, rng: random.Random | None = None) -> dt.timedelta:
        """How long retry number ``auto_retries + 1`` waits: the base doubled per earlier
        retry, capped, with "equal jitter" (between half and all of it) so that jobs lost
        together do not all come back in the same instant."""
        exponent = min(auto_retries, 30)
        full = min(self.backoff_base * (2**exponent), self.backoff_max)
        draw = rng.random() if rng is not None else random.random()
        return dt.timedelta(seconds=full.total_seconds() * (0.5 + 0.5 * draw))


def is_infrastructure_failure(failure_kind: str | None) -> bool:
    return failure_kind in INFRASTRUCTURE_FAILURES
