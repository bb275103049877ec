"""Background work of one server process: the periodic sweep, and the reconcile of why
queued jobs wait.

Every replica runs both; each step is safe to run concurrently (compare-and-set updates).
The time is passed in, so tests sweep "an hour later" by handing a clock value instead of
sleeping. Each pass is a span of its own trace (``delidev/tracing.py``; the API's no-op tracer
when tracing is off), so the statements it sends show up under it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from opentelemetry import trace

from delidev import db_outage, events
from delidev.services import auth as auth_service
from delidev.services import secrets, sessions, workers
from delidev.services.common import now as current_time
from delidev.services.scheduling import waits
from delidev.services.scheduling.policy import RetryPolicy
from delidev.services.secrets import SecretStore
from delidev.services.workers.limits import DEFAULT_STOP_GRACE

log = logging.getLogger(__name__)


class Sweeper:
    """Marks silent workers unhealthy (their jobs go back to the queue, as ``policy``
    allows) and removes those silent for ``forget_after``, asks runs past their time limit
    to stop and finalises stops unconfirmed for ``stop_grace``, times out unanswered
    questions, prunes secrets, drops expired sign-in rows and reconciles why queued jobs
    wait (a backoff ends with time), every heartbeat interval."""

    def __init__(
        self,
        *,
        bus: events.EventBus,
        store: SecretStore,
        heartbeat_interval: dt.timedelta,
        stop_grace: dt.timedelta = DEFAULT_STOP_GRACE,
        policy: RetryPolicy = RetryPolicy(),  # noqa: B008  # frozen
        forget_after: dt.timedelta | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._bus = bus
        self.forget_after = forget_after
        self._tracer = tracer or trace.NoOpTracer()
        self._store = store
        self.interval = heartbeat_interval
        self.stop_grace = stop_grace
        self.policy = policy

    async def sweep(self, now: dt.datetime | None = None) -> None:
        """One pass, as of ``now`` (default: the current time)."""
        with self._tracer.start_as_current_span("delidev.sweep"):
            await self._sweep(now or dt.datetime.now(dt.UTC))

    async def _sweep(self, now: dt.datetime) -> None:
        # Heartbeats sent while the database was unreachable were not stored: no worker is
        # taken for silent until the database has answered for as long as that takes.
        recovered = (
            db_outage.seconds_since_last() >= (self.interval * workers.MISSED_BEATS).total_seconds()
        )
        await workers.sweep_workers(
            heartbeat_interval=self.interval,
            now=now,
            stop_grace=self.stop_grace,
            policy=self.policy,
            forget_after=self.forget_after,
            mark_silent=recovered,
        )
        await sessions.expire_tty_requests(now)
        await secrets.prune_secrets(self._store)
        await auth_service.purge_expired(now=now)
        await waits.reconcile_waits(store=self._store, now=now)

    async def run_forever(self) -> None:
        events.bind(self._bus)
        while True:
            await asyncio.sleep(self.interval.total_seconds())
            try:
                await self.sweep()
            except Exception as error:
                db_outage.log_failure(
                    log, error, "background sweep failed; retrying at the next interval"
                )


# The events after which a queued job's reason to wait may have changed.
# After the moment a backoff ends: the pass must see it ended (clocks are read separately).
_TIME_MARGIN_S = 0.01
_RECONCILED_AFTER = (
    events.JobQueued,
    events.WorkerChanged,
    events.SessionChanged,
    events.SecretsArrived,
)
# A pass after new jobs only looks at jobs queued since the previous pass began, less this
# (a job committed through another replica carries its creation time, which is earlier).
_QUEUED_MARGIN = dt.timedelta(seconds=5)


class WaitReconciler:
    """Stores why each queued job waits (``waits.reconcile_waits``) ``debounce`` after the
    events that can change it, from this replica or another: a burst of events (a claim
    publishes several) costs one pass. A backoff or a budget block that ends with time
    alone gets a pass of its own when it ends (a timer armed after each pass; the sweep
    reconciles too), which wakes the watching workers (``JobQueued``).

    A pass reads every queued job only when something a waiting job depends on may have
    changed: the live fleet's kinds of worker, the caps (or, with caps, the running counts)
    or secrets. Claims and reports alone (workers going busy and idle) change none of them,
    and new jobs need only their own reasons: so a storm of claims over a long queue costs
    a small query per pass, not a read of the whole queue."""

    def __init__(
        self,
        *,
        bus: events.EventBus,
        store: SecretStore,
        debounce: dt.timedelta = dt.timedelta(milliseconds=50),
        min_interval: dt.timedelta = dt.timedelta(seconds=1),
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._bus = bus
        self._tracer = tracer or trace.NoOpTracer()
        self._store = store
        self.debounce = debounce
        # A pass reads up to thousands of queued runs: under a storm of claims (each
        # publishes events) passes come at most this often, not after every burst.
        self.min_interval = min_interval
        self._due: asyncio.Event | None = None
        self._heard: set[type[events.Event]] = set()
        self._inputs: waits.Inputs | None = None
        self._last_pass: dt.datetime | None = None
        self.full_passes = 0  # for tests and logs: passes that read the whole queue
        self._timer: asyncio.TimerHandle | None = None
        self._time_due = False

    def _hear(self, event: events.Event) -> None:
        if self._due is not None and isinstance(event, _RECONCILED_AFTER):
            self._heard.add(type(event))
            self._due.set()

    async def reconcile(self, heard: set[type[events.Event]]) -> None:
        """One pass after the events ``heard`` (of the kinds in ``_RECONCILED_AFTER``)."""
        with self._tracer.start_as_current_span("delidev.reconcile_waits"):
            await self._reconcile(heard)

    async def _reconcile(self, heard: set[type[events.Event]]) -> None:
        started = current_time()
        inputs = await waits.inputs()
        everything = (
            self._inputs is None
            or self._last_pass is None
            or inputs != self._inputs
            or events.SecretsArrived in heard
            or (bool(inputs.caps) and events.SessionChanged in heard)
        )
        everything = everything or self._time_due
        self._time_due = False
        if everything:
            await waits.reconcile_waits(store=self._store)
            self.full_passes += 1
        elif events.JobQueued in heard and self._last_pass is not None:
            await waits.reconcile_waits(
                store=self._store, queued_since=self._last_pass - _QUEUED_MARGIN
            )
        self._inputs, self._last_pass = inputs, started
        await self._arm_timer()

    async def _arm_timer(self) -> None:
        """A pass when the next backoff or budget block ends: nothing announces it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = await waits.next_change_by_time()
        if when is None or self._due is None:
            return
        delay = max((when - current_time()).total_seconds(), 0.0) + _TIME_MARGIN_S
        self._timer = asyncio.get_running_loop().call_later(delay, self._pass_for_time)

    def _pass_for_time(self) -> None:
        self._timer = None
        if self._due is not None:
            self._time_due = True
            self._due.set()

    async def run_forever(self) -> None:
        events.bind(self._bus)
        due = self._due = asyncio.Event()
        unsubscribe = self._bus.subscribe(self._hear)
        try:
            loop = asyncio.get_running_loop()
            while True:
                await due.wait()
                await asyncio.sleep(self.debounce.total_seconds())
                due.clear()  # events from here on ask for the next pass
                heard, self._heard = self._heard, set()
                started = loop.time()
                try:
                    await self.reconcile(heard)
                except Exception as error:
                    self._inputs = None  # the next pass reads everything
                    db_outage.log_failure(
                        log, error, "reconciling why jobs wait failed; retrying at the next event"
                    )
                rest = self.min_interval.total_seconds() - (loop.time() - started)
                if rest > 0:
                    await asyncio.sleep(rest)
        finally:
            unsubscribe()
            self._due = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
