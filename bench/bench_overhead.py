"""What operations cost: requests/s with the Prometheus metrics on against off, and with
tracing on (sampler ``always_off``) against off, same run.

    python bench/bench_overhead.py [--seconds 4] [--rounds 3] [--concurrency 16]

Three server processes (``bench._app:make_app``, one uvicorn worker each, SQLite files of
their own): "off" (``DELIDEV_METRICS=false``, no ``OTEL_*``), "on" (metrics on) and "traced"
(metrics off; tracing on with ``OTEL_TRACES_SAMPLER=always_off`` and an OTLP exporter aimed
at a closed loopback port, so that every layer is installed but no span is recorded). The
load is ``bench_get.py``'s: its client processes and its checked scenarios (Connect JSON
``WorkspaceService.Get`` and the GraphQL ``workspace`` query), in interleaved windows (off,
on, traced, off...) so that a busy neighbour hurts all alike. The table gives each
scenario's median req/s for each server, the ratios to "off" and the server CPU per request.
Not a test: nothing is asserted (the target in issue 12 is a cost of at most 5 % of req/s,
for each).
"""

from __future__ import annotations

import argparse
import os
import socket
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
LABELS = ("off", "on", "traced")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment(label: str) -> dict[str, str]:
    if label != "traced":
        return {"DELIDEV_METRICS": "true" if label == "on" else "false"}
    return {
        "DELIDEV_METRICS": "false",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{_closed_port()}/v1/traces",
        "OTEL_TRACES_SAMPLER": "always_off",
    }


def _server(tmp: Path, name: str) -> tuple[object, int, list[Scenario]]:
    saved = dict(os.environ)
    os.environ.update(_environment(name))  # the server process inherits it
    try:
        proc, port = start_server(f"sqlite://{tmp / (name + '.db')}", tmp / f"{name}.log")
    finally:
        os.environ.clear()
        os.environ.update(saved)
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
            servers = {label: _server(Path(tmp), label) for label in LABELS}
            procs = [proc for proc, _, _ in servers.values()]
            for round_no in range(1, args.rounds + 1):
                for index in range(len(SCENARIOS)):
                    for label in LABELS:
                        proc, port, scenarios = servers[label]
                        sc = scenarios[index]
                        print(f"{label:<7}", end="")
                        _run_window(
                            args,
                            clients,
                            proc.pid,
                            port,
                            sc,
                            [args.concurrency],
                            round_no,  # type: ignore[attr-defined]
                        )
            print(f"\n{'scenario':<15}{'off req/s':>10}{'on req/s':>10}{'traced':>8}{'on/off':>8}"
                  f"{'traced/off':>11}{'us/req off':>11}{'on':>6}{'traced':>7}")  # fmt: skip
            for index, name in enumerate(SCENARIOS):
                runs = [servers[label][2][index] for label in LABELS]
                rates = [statistics.median(r.rates) for r in runs]
                cpu = [_per_request(r.server_cpu, r.rates) or 0.0 for r in runs]
                print(
                    f"{name:<15}{rates[0]:10.0f}{rates[1]:10.0f}{rates[2]:8.0f}"
                    f"{rates[1] / rates[0]:8.3f}{rates[2] / rates[0]:11.3f}"
                    f"{cpu[0]:11.0f}{cpu[1]:6.0f}{cpu[2]:7.0f}"
                )
            print(
                "\nmedian over rounds, same run; on/off = req/s with metrics / without;"
                " traced/off = req/s with tracing (always_off sampler) / without"
            )
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
