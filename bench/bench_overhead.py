"""What operations cost: requests/s with the Prometheus metrics on against off, same run.

    python bench/bench_overhead.py [--seconds 4] [--rounds 3] [--concurrency 16]

Two server processes (``bench._app:make_app``, one uvicorn worker each, SQLite files of
their own) differ only in ``DELIDEV_METRICS``. The load is ``bench_get.py``'s: its client
processes and its checked scenarios (Connect JSON ``WorkspaceService.Get`` and the GraphQL
``workspace`` query), in interleaved windows (off, on, off, on...) so that a busy neighbour
hurts both alike. The table gives each scenario's median req/s with metrics off and on,
their ratio and the server CPU per request. Not a test: nothing is asserted (the target in
issue 12 is a cost of at most 5 % of req/s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.bench_get import (  # noqa: E402
    WORKSPACE_NAME,
    Clients,
    RunFailed,
    Scenario,
    _per_request,
    _run_window,
    check_scenarios,
    make_scenarios,
    start_server,
    stop_server,
)

SCENARIOS = ("connect-json", "graphql")


def _server(tmp: Path, name: str, metrics: bool) -> tuple[object, int, list[Scenario]]:
    os.environ["DELIDEV_METRICS"] = "true" if metrics else "false"
    proc, port = start_server(f"sqlite://{tmp / (name + '.db')}", tmp / f"{name}.log")
    base = f"http://127.0.0.1:{port}"
    created = httpx.post(
        f"{base}/delidev.v1.WorkspaceService/Create", json={"name": WORKSPACE_NAME}, timeout=10
    )
    if created.status_code != 200:
        raise RunFailed(f"Create: HTTP {created.status_code}")
    workspace_id = created.json()["workspace"]["id"]
    scenarios = [s for s in make_scenarios(workspace_id) if s.name in SCENARIOS]
    check_scenarios(base, scenarios, workspace_id)
    return proc, port, scenarios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_overhead.py")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    args.client = "raw"
    args.client_procs = 1
    procs = []
    clients = Clients(1)
    try:
        with tempfile.TemporaryDirectory(prefix="delidev-overhead-") as tmp:
            servers = {
                label: _server(Path(tmp), label, metrics)
                for label, metrics in (("off", False), ("on", True))
            }
            procs = [proc for proc, _, _ in servers.values()]
            for round_no in range(1, args.rounds + 1):
                for index in range(len(SCENARIOS)):
                    for label in ("off", "on"):
                        proc, port, scenarios = servers[label]
                        sc = scenarios[index]
                        print(f"metrics {label:<4}", end="")
                        _run_window(
                            args,
                            clients,
                            proc.pid,
                            port,
                            sc,
                            [args.concurrency],
                            round_no,  # type: ignore[attr-defined]
                        )
            print(f"\n{'scenario':<15}{'off req/s':>10}{'on req/s':>10}{'on/off':>8}"
                  f"{'off us/req':>12}{'on us/req':>11}")  # fmt: skip
            for index, name in enumerate(SCENARIOS):
                off, on = servers["off"][2][index], servers["on"][2][index]
                off_rate, on_rate = statistics.median(off.rates), statistics.median(on.rates)
                off_cpu = _per_request(off.server_cpu, off.rates) or 0.0
                on_cpu = _per_request(on.server_cpu, on.rates) or 0.0
                print(
                    f"{name:<15}{off_rate:10.0f}{on_rate:10.0f}{on_rate / off_rate:8.3f}"
                    f"{off_cpu:12.0f}{on_cpu:11.0f}"
                )
            print("\nmedian over rounds; on/off = req/s with metrics / without, same run")
            errors = sum(sc.errors for _, _, scs in servers.values() for sc in scs)
            return 1 if errors else 0
    except RunFailed as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    finally:
        for proc in procs:
            stop_server(proc)  # type: ignore[arg-type]
        clients.close()


if __name__ == "__main__":
    sys.exit(main())
