"""``delidev-worker-sim``: command-line options, a fleet of workers in one process, the
summary it prints."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from connectrpc.errors import ConnectError
from opentelemetry import trace

from delidev import tracing
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.worker_sim.options import AGENT_TYPES, Options, Stats
from delidev.worker_sim.usage import Spent
from delidev.worker_sim.worker import SimWorker


def parse_args(argv: list[str] | None = None) -> tuple[Options, int, str | None]:
    p = argparse.ArgumentParser(prog="delidev-worker-sim", description=__doc__.split("\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:54871", help="Main Server base URL")
    p.add_argument("--name", default="sim", help="worker name (suffixed -N with --workers)")
    p.add_argument("--workers", type=int, default=1, help="simulated workers in this process")
    p.add_argument("--registration-token", default="", help="multi-user registration token")
    p.add_argument("--lines", type=int, default=20, help="output lines per job")
    p.add_argument("--lines-per-second", type=float, default=200.0, help="0 = as fast as can be")
    p.add_argument("--chunk-interval", type=float, default=0.05, help="seconds between uploads")
    p.add_argument("--plan-tasks", type=int, default=3, help="tasks in a planning job's plan")
    p.add_argument("--plan-file", default=None, help="PLAN.yaml that planning jobs report")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of jobs that fail")
    p.add_argument("--wait-ms", type=int, default=5_000, help="long-poll wait of GetTask")
    p.add_argument(
        "--poll", action="store_true", help="claim by long polling GetTask (no Watch stream)"
    )
    p.add_argument(
        "--agent-type",
        action="append",
        default=[],
        choices=sorted(AGENT_TYPES),
        help="an agent type this worker runs (repeat; none = every type)",
    )
    p.add_argument(
        "--label", action="append", default=[], help="a key=value label of this worker (repeat)"
    )
    p.add_argument("--max-jobs", type=int, default=0, help="exit after N jobs each (0 = never)")
    p.add_argument("--idle-exit", type=float, default=0.0, help="exit after S idle seconds")
    p.add_argument(
        "--retry-max", type=float, default=10.0, help="longest back-off after errors, seconds"
    )
    p.add_argument(
        "--usage",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="report plausible token usage and cost as runs go",
    )
    p.add_argument(
        "--usage-model",
        default=None,
        help="the model runs bill (default: the task's, else one per agent type)",
    )
    p.add_argument("--usage-every", type=int, default=5, help="lines between usage reports")
    p.add_argument("--report", default=None, help="write the sessions run as JSON to this file")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    if not 0.0 <= a.fail_rate <= 1.0:
        p.error("--fail-rate must be between 0 and 1")
    if a.usage_every < 1:
        p.error("--usage-every must be at least 1")
    options = Options(
        server=a.server,
        name=a.name,
        registration_token=a.registration_token,
        lines=a.lines,
        lines_per_second=a.lines_per_second,
        chunk_interval=a.chunk_interval,
        plan_tasks=a.plan_tasks,
        plan_text=Path(a.plan_file).read_text() if a.plan_file else None,
        fail_rate=a.fail_rate,
        wait_ms=a.wait_ms,
        max_jobs=a.max_jobs,
        idle_exit=a.idle_exit,
        retry_base=min(0.2, a.retry_max),
        retry_max=a.retry_max,
        poll=a.poll,
        agent_types=tuple(AGENT_TYPES[t] for t in a.agent_type),
        labels=tuple(a.label),
        usage=a.usage,
        usage_model=a.usage_model,
        usage_every=a.usage_every,
    )
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(message)s")
    return options, max(1, a.workers), a.report


_REPORT_ONLY = ("sessions", "usage_by_session")  # in the --report file, not on stdout


def _stop_all(fleet: list[SimWorker]) -> None:
    for worker in fleet:
        worker.stop()


async def run_fleet(
    options: Options,
    count: int,
    make_client: Callable[[Options], WorkerServiceClient] | None = None,
) -> list[Stats]:
    """Runs ``count`` workers in this process until each reaches its own limits."""
    fleet = []
    for i in range(count):
        name = f"{options.name}-{i}" if count > 1 else options.name
        each = Options(**{**options.__dict__, "name": name})
        fleet.append(SimWorker(each, make_client(each) if make_client else None))
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, _stop_all, fleet)
            handled.append(sig)
    try:
        return list(await asyncio.gather(*(w.run() for w in fleet)))
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await asyncio.gather(*(w.close() for w in fleet))


def main(argv: list[str] | None = None) -> int:
    options, count, report = parse_args(argv)
    traced = tracing.from_environ(os.environ, service_name="delidev-worker-sim")
    if traced is not None:  # the OpenTelemetry API's spans (worker.py) go to it
        trace.set_tracer_provider(traced.provider)
    try:
        stats = asyncio.run(run_fleet(options, count))
    except ConnectError as e:
        print(f"delidev-worker-sim: the server refused: {e.code.name}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"delidev-worker-sim: cannot reach {options.server}: {e}", file=sys.stderr)
        return 1
    finally:
        if traced is not None:
            traced.shutdown()  # flushes the spans still held
    summary = {
        "sessions": [s for st in stats for s in st.sessions],
        "succeeded": sum(st.succeeded for st in stats),
        "failed": sum(st.failed for st in stats),
        "stopped": sum(st.stopped for st in stats),
        "refused": sum(st.refused for st in stats),
        "abandoned": sum(st.abandoned for st in stats),
        "errors": sum(st.errors for st in stats),
        "lines": sum(st.lines for st in stats),
        "pushed": sum(st.pushed for st in stats),
        "polled": sum(st.polled for st in stats),
    }
    by_session = {s: spent for st in stats for s, spent in st.usage.items()}
    if by_session:  # only with usage on: the summary of a run without it stays as it was
        summary["usage"] = sum(by_session.values(), Spent()).as_dict()
        summary["usage_by_session"] = {s: spent.as_dict() for s, spent in by_session.items()}
    if report:
        with open(report, "w") as f:
            json.dump(summary, f)
    print(json.dumps({k: v for k, v in summary.items() if k not in _REPORT_ONLY}))
    return 0


def cli() -> None:
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The HTTP client's native runtime can abort while the interpreter finalises (seen with
    # pyqwest 0.12 after many requests): everything is closed and flushed, so skip that.
    os._exit(code)
