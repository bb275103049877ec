"""Throughput of WorkspaceService.Get (Connect JSON and binary) and of the GraphQL ``workspace``
query, each against a bare Starlette route doing the same database read, in the same run.

    python bench/bench_get.py [--seconds 5] [--rounds 3] [--concurrency 16]
                              [--database-url postgres://postgres@127.0.0.1:5432/<db>]
                              [--client raw|httpx] [--client-procs 1]

It starts ONE real server process (uvicorn, one worker, loopback, a free port) serving
``bench._app:make_app``: the real app plus ``POST /bare/workspace``. The load comes from
separate client processes over keep-alive HTTP/1.1 connections. The scenarios run in
interleaved rounds (bare, connect-json, connect-binary, graphql, then again), and the table
gives each one's median requests/s and its ratio to the bare route of the same run.

Every response is checked: status 200 and a body byte-for-byte equal to a reference
response that was parsed and checked (workspace id and name) before the run. Anything else
counts as an error.

Not a test: it asserts nothing about speed. Exit status: 0 when the run completed without
errors, 1 when responses were wrong, 2 when the server failed or the run hit its time limit,
130 when interrupted. The server and the client processes are stopped in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``bench`` and ``delidev`` importable
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

BARE_PATH = "/bare/workspace"  # served by bench/_app.py (not imported here: the client
# processes re-import this module and need none of the server's packages)
RAW_PATH = "/bare/workspace-raw"  # the same route, read through the driver (bench/_app.py)

GRAPHQL_QUERY = "query($id: ID!){ workspace(id: $id){ id name description createdAt updatedAt } }"
# Issue 16's targets, as a share of bare's req/s.
TARGETS = {"connect-json": 0.95, "connect-binary": 0.95, "graphql": 0.8}
# Issue 16: bare's server CPU per read at most this many times bare-raw's (the driver's read).
RAW_CPU_TARGET = 2.0
WORKSPACE_NAME = "bench"
STARTUP_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    path: str
    headers: dict[str, str]
    body: bytes
    expect: bytes = b""  # the reference response body, filled in by check_scenarios()
    rates: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)  # cores busy, server process
    client_cpu: list[float] = field(default_factory=list)  # cores busy, all client procs
    errors: int = 0
    first_error: str = ""


def make_scenarios(workspace_id: str) -> list[Scenario]:
    from delidev.connect.gen.delidev.v1 import workspace_pb

    json_id = json.dumps({"workspaceId": workspace_id}).encode()
    # No Accept-Encoding anywhere: connectrpc gzips every unary response a client accepts
    # gzip for, however small, and the bare route never compresses.
    connect = {"connect-protocol-version": "1"}
    return [
        Scenario("bare", BARE_PATH, {"content-type": "application/json"}, json_id),
        Scenario("bare-raw", RAW_PATH, {"content-type": "application/json"}, json_id),
        Scenario(
            "connect-json",
            "/delidev.v1.WorkspaceService/Get",
            {"content-type": "application/json", **connect},
            json_id,
        ),
        Scenario(
            "connect-binary",
            "/delidev.v1.WorkspaceService/Get",
            {"content-type": "application/proto", **connect},
            workspace_pb.GetWorkspaceRequest(workspace_id=workspace_id).to_binary(),
        ),
        Scenario(
            "graphql",
            "/graphql",
            {"content-type": "application/json"},
            json.dumps({"query": GRAPHQL_QUERY, "variables": {"id": workspace_id}}).encode(),
        ),
    ]


def check_scenarios(base: str, scenarios: list[Scenario], workspace_id: str) -> None:
    """One request per scenario, parsed and checked; its body becomes the reference."""
    from delidev.connect.gen.delidev.v1 import workspace_pb

    with httpx.Client(base_url=base, timeout=10) as client:
        for sc in scenarios:
            resp = client.post(
                sc.path, content=sc.body, headers={**sc.headers, "accept-encoding": "identity"}
            )
            if resp.status_code != 200:
                raise RunFailed(f"{sc.name}: HTTP {resp.status_code}: {resp.text[:300]}")
            if sc.name == "connect-binary":
                ws = workspace_pb.GetWorkspaceResponse.from_binary(resp.content).workspace
                got = (ws.id, ws.name) if ws is not None else ("", "")
            elif sc.name == "graphql":
                doc = resp.json()
                if doc.get("errors"):
                    raise RunFailed(f"graphql: errors in the response: {doc['errors']}")
                got = (doc["data"]["workspace"]["id"], doc["data"]["workspace"]["name"])
            else:
                doc = resp.json()["workspace"]
                got = (doc["id"], doc["name"])
            if got != (workspace_id, WORKSPACE_NAME):
                raise RunFailed(f"{sc.name}: wrong workspace in the response: {got}")
            sc.expect = resp.content


# --------------------------------------------------------------------------- load generator
# Runs in client processes. One window: open the connections, send requests back to back
# (closed loop, one in flight per connection), count the good responses completed between
# ``start`` and ``stop`` (CLOCK_MONOTONIC is system-wide, so every client process and the
# parent agree on the window), then close.


@dataclass
class WindowSpec:
    host: str
    port: int
    path: str
    headers: dict[str, str]
    body: bytes
    expect: bytes
    connections: int
    start: float  # time.monotonic() at which counting starts; before that is warm-up
    stop: float
    client: str  # "raw" or "httpx"


@dataclass
class WindowResult:
    count: int = 0
    errors: int = 0
    first_error: str = ""
    cpu_s: float = 0.0  # process CPU time spent during the measured window


class _Counter:
    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.result = WindowResult()
        self.cpu_at_start: float | None = None

    def record(self, status: int, body: bytes) -> bool:
        """Counts one response; False when the window is over."""
        now = time.monotonic()
        if status != 200 or body != self.spec.expect:
            self.result.errors += 1
            if not self.result.first_error:
                self.result.first_error = f"HTTP {status}: {body[:200]!r}"
        elif self.spec.start <= now < self.spec.stop:
            self.result.count += 1
        return now < self.spec.stop

    def error(self, exc: BaseException) -> None:
        self.result.errors += 1
        if not self.result.first_error:
            self.result.first_error = f"{type(exc).__name__}: {exc}"


async def _cpu_sampler(counter: _Counter) -> None:
    await asyncio.sleep(max(0.0, counter.spec.start - time.monotonic()))
    counter.cpu_at_start = time.process_time()
    await asyncio.sleep(max(0.0, counter.spec.stop - time.monotonic()))
    counter.result.cpu_s = time.process_time() - counter.cpu_at_start


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, (await reader.readexactly(length)) if length else b""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _raw_window(counter: _Counter) -> None:
    """A minimal HTTP/1.1 client: pre-built request bytes, a small response parser."""
    spec = counter.spec
    head = f"POST {spec.path} HTTP/1.1\r\nhost: {spec.host}:{spec.port}\r\n"
    for name, value in spec.headers.items():
        head += f"{name}: {value}\r\n"
    request = (head + f"content-length: {len(spec.body)}\r\n\r\n").encode() + spec.body

    async def connection() -> None:
        try:
            reader, writer = await asyncio.open_connection(spec.host, spec.port)
        except OSError as exc:
            counter.error(exc)
            return
        try:
            while True:
                writer.write(request)
                status, body = await read_response(reader)
                if not counter.record(status, body):
                    return
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            counter.error(exc)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(spec.connections)))


async def _httpx_window(counter: _Counter) -> None:
    spec = counter.spec
    limits = httpx.Limits(
        max_connections=spec.connections, max_keepalive_connections=spec.connections
    )
    headers = {**spec.headers, "accept-encoding": "identity"}
    async with httpx.AsyncClient(
        base_url=f"http://{spec.host}:{spec.port}", limits=limits, timeout=30
    ) as client:

        async def worker() -> None:
            while True:
                try:
                    resp = await client.post(spec.path, content=spec.body, headers=headers)
                except httpx.HTTPError as exc:
                    counter.error(exc)
                    if time.monotonic() >= spec.stop:
                        return
                    await asyncio.sleep(0.05)
                    continue
                if not counter.record(resp.status_code, resp.content):
                    return

        await asyncio.gather(*(worker() for _ in range(spec.connections)))


async def _window(spec: WindowSpec) -> WindowResult:
    counter = _Counter(spec)
    sampler = asyncio.create_task(_cpu_sampler(counter))
    drive = _raw_window if spec.client == "raw" else _httpx_window
    try:
        # A stalled server must not hang the client: give up a few seconds after the window.
        async with asyncio.timeout(max(0.0, spec.stop - time.monotonic()) + 10):
            await drive(counter)
    except TimeoutError:
        counter.error(TimeoutError("responses stalled past the end of the window"))
    await sampler
    return counter.result


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _client_process(conn: Connection) -> None:
    """A client process: runs the windows it is sent until it receives None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _die_with_parent()
    while True:
        spec = conn.recv()
        if spec is None:
            return
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            conn.send(runner.run(_window(spec)))


# --------------------------------------------------------------------------- processes


try:  # resolved up front: _die_with_parent() also runs between fork and exec
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the bench process dies, however it dies."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Clients:
    def __init__(self, procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[Any] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_process, args=(child,), daemon=True)
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)

    def run(self, specs: list[WindowSpec], timeout: float) -> list[WindowResult]:
        for pipe, spec in zip(self._pipes, specs, strict=True):
            pipe.send(spec)
        results = []
        deadline = time.monotonic() + timeout
        for pipe in self._pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("a client process did not report back")
            results.append(pipe.recv())
        return results

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self._procs:
            proc.join(2)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)


class RunFailed(Exception):
    """The run cannot go on: the server or a client failed, or a response was wrong."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    database_url: str, log_path: Path, extra_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """Starts uvicorn serving bench._app:make_app; returns it once /readyz answers 200."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DELIDEV_SINGLE_USER_MODE": "true",
        "DELIDEV_LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    for _attempt in range(3):  # the free port can be taken between probing and binding
        port = free_port()
        cmd = [
            sys.executable, "-m", "uvicorn", "--factory", "bench._app:make_app",
            "--app-dir", str(REPO), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--log-level", "warning", "--no-access-log",
            "--timeout-graceful-shutdown", "5",
            "--ws", "delidev.websocket_deflate:WebSocketProtocol", *extra_args,
        ]  # fmt: skip
        with log_path.open("ab") as log:
            # Its own session: a Ctrl-C at the terminal reaches only the bench, which then
            # stops the server with one SIGINT (a second one would skip the lifespan exit).
            proc = subprocess.Popen(
                cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return proc, port
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        stop_server(proc)
        if b"address already in use" not in log_path.read_bytes().lower():
            break
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RunFailed(f"the server did not become ready; its output:\n{tail}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown, runs the lifespan exit
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc; None where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy_s() -> float | None:
    """CPU seconds all cores spent not idle (everyone's work: ours and the neighbours')."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_get.py",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per scenario and round"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per window")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="keep-alive connections in total"
    )
    parser.add_argument(
        "--database-url",
        help="default: a fresh SQLite file in a temporary directory; or "
        "postgres://postgres@127.0.0.1:5432/<db> (an existing, throwaway database: "
        "migrations are applied and one workspace is created)",
    )
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator: a minimal asyncio HTTP/1.1 client (cheap: ~45 us of CPU per "
        "request) or httpx.AsyncClient (0.8-1.5 ms per request, more than the server: on a "
        "small machine it, not the server, sets the pace; see README)",
    )
    parser.add_argument(
        "--client-procs", type=int, default=1, help="client processes sharing the connections"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        help="hard limit on the whole run in seconds (default: planned time + 90 s)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --rounds >= 1")
    if not 1 <= args.client_procs <= args.concurrency:
        parser.error("--client-procs must be between 1 and --concurrency")
    return args


def _watchdog(limit_s: float, cleanup: list[subprocess.Popen[bytes]]) -> threading.Timer:
    def expire() -> None:
        print(f"\nbench: time limit of {limit_s:.0f} s reached, stopping", file=sys.stderr)
        for proc in cleanup:
            with contextlib.suppress(Exception):
                proc.kill()
        os._exit(2)

    timer = threading.Timer(limit_s, expire)
    timer.daemon = True
    timer.start()
    return timer


def run(args: argparse.Namespace) -> int:
    windows = 4 * args.rounds
    planned = windows * (args.seconds + args.warmup + 0.5)
    limit = args.time_limit or planned + 90
    server_procs: list[subprocess.Popen[bytes]] = []
    watchdog = _watchdog(limit, server_procs)

    with tempfile.TemporaryDirectory(prefix="delidev-bench-") as tmp:
        database_url = args.database_url or f"sqlite://{Path(tmp) / 'bench.db'}"
        log_path = Path(tmp) / "server.log"
        clients: Clients | None = None
        proc: subprocess.Popen[bytes] | None = None
        try:
            clients = Clients(args.client_procs)  # spawns while the server starts
            proc, port = start_server(database_url, log_path)
            server_procs.append(proc)
            base = f"http://127.0.0.1:{port}"
            created = httpx.post(
                f"{base}/delidev.v1.WorkspaceService/Create",
                json={"name": WORKSPACE_NAME, "description": "benchmark workspace"},
                timeout=10,
            )
            if created.status_code != 200:
                raise RunFailed(f"Create: HTTP {created.status_code}: {created.text[:300]}")
            workspace_id = created.json()["workspace"]["id"]
            scenarios = make_scenarios(workspace_id)
            check_scenarios(base, scenarios, workspace_id)

            db_kind = "PostgreSQL" if database_url.startswith("postgres") else "SQLite"
            print(
                f"server pid {proc.pid} (uvicorn, 1 worker, {base}), {db_kind}; "
                f"client: {args.client}, {args.client_procs} process(es), "
                f"{args.concurrency} connections; {args.rounds} rounds x "
                f"({args.warmup:g} s warm-up + {args.seconds:g} s) per scenario; "
                f"{os.cpu_count()} CPUs",
                flush=True,
            )
            print(
                f"{'':9}{'scenario':<15}{'req/s':>8}{'server CPU':>12}{'client CPU':>12}"
                f"{'host busy':>11}",
                flush=True,
            )
            share = [
                args.concurrency // args.client_procs + (i < args.concurrency % args.client_procs)
                for i in range(args.client_procs)
            ]
            for round_no in range(1, args.rounds + 1):
                for sc in scenarios:
                    _run_window(args, clients, proc.pid, port, sc, share, round_no)
                    if proc.poll() is not None:
                        tail = log_path.read_text(errors="replace")[-3000:]
                        raise RunFailed(f"the server exited during the run:\n{tail}")
            return _report(args, scenarios)
        except KeyboardInterrupt:
            print("\nbench: interrupted", file=sys.stderr)
            return 130
        except RunFailed as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        finally:
            if proc is not None:
                stop_server(proc)
            if clients is not None:
                clients.close()
            watchdog.cancel()


def _run_window(
    args: argparse.Namespace,
    clients: Clients,
    server_pid: int,
    port: int,
    sc: Scenario,
    share: list[int],
    round_no: int,
) -> None:
    start = time.monotonic() + 0.3 + args.warmup  # 0.3 s for the specs to reach the clients
    stop = start + args.seconds
    specs = [
        WindowSpec(
            "127.0.0.1", port, sc.path, sc.headers, sc.body, sc.expect, n, start, stop, args.client
        )
        for n in share
    ]
    result: list[WindowResult] = []
    failure: list[BaseException] = []

    def drive() -> None:
        try:
            result.extend(clients.run(specs, args.seconds + args.warmup + 30))
        except Exception as exc:
            failure.append(exc)

    runner = threading.Thread(target=drive, daemon=True)
    runner.start()
    time.sleep(max(0.0, start - time.monotonic()))
    cpu0, busy0, t0 = process_cpu_s(server_pid), host_busy_s(), time.monotonic()
    time.sleep(max(0.0, stop - time.monotonic()))
    cpu1, busy1, t1 = process_cpu_s(server_pid), host_busy_s(), time.monotonic()
    runner.join()
    if failure or not result:
        raise RunFailed(f"the client processes failed: {failure[0] if failure else 'no result'}")
    elapsed = t1 - t0
    rate = sum(r.count for r in result) / args.seconds
    client_cpu = sum(r.cpu_s for r in result) / args.seconds
    server_cpu = (cpu1 - cpu0) / elapsed if cpu0 is not None and cpu1 is not None else None
    busy = (busy1 - busy0) / elapsed if busy0 is not None and busy1 is not None else None
    sc.rates.append(rate)
    sc.client_cpu.append(client_cpu)
    if server_cpu is not None:
        sc.server_cpu.append(server_cpu)
    for r in result:
        sc.errors += r.errors
        sc.first_error = sc.first_error or r.first_error
    print(
        f"round {round_no}  {sc.name:<15}{rate:8.0f}{_cores(server_cpu):>12}"
        f"{_cores(client_cpu):>12}{_cores(busy):>11}"
        + (f"   {sum(r.errors for r in result)} errors" if any(r.errors for r in result) else ""),
        flush=True,
    )


def _cores(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} core"


def _report(args: argparse.Namespace, scenarios: list[Scenario]) -> int:
    bare = scenarios[0]
    baseline = statistics.median(bare.rates)
    bare_cpu = _per_request(bare.server_cpu, bare.rates)
    print()
    print(
        f"{'scenario':<16}{'median req/s':>13}{'x bare':>8}  {'target':<17}"
        f"{'server us/req':>14}{'x bare':>8}{'client us/req':>14}{'errors':>8}"
    )
    for sc in scenarios:
        median = statistics.median(sc.rates)
        ratio = median / baseline if baseline else float("nan")
        target = TARGETS.get(sc.name)
        if sc.name == "bare-raw":
            verdict = "(driver read)"
        elif target is None:
            verdict = "(baseline)"
        else:
            verdict = f">= {target:.2f} {'met' if ratio >= target else 'NOT met'}"
        # CPU per request from each round's CPU and rate, median over rounds. Its ratio
        # (bare's CPU per request / this one's) is a second reading of "x bare" that a
        # saturated client or a busy neighbour disturbs less.
        srv = _per_request(sc.server_cpu, sc.rates)
        cli = _per_request(sc.client_cpu, sc.rates)
        cpu_ratio = f"{bare_cpu / srv:.2f}" if bare_cpu and srv else "n/a"
        print(
            f"{sc.name:<16}{median:13.0f}{ratio:8.3f}  {verdict:<17}{_us(srv):>14}"
            f"{cpu_ratio:>8}{_us(cli):>14}{sc.errors:>8}"
        )
    raw = next((sc for sc in scenarios if sc.name == "bare-raw"), None)
    raw_cpu = _per_request(raw.server_cpu, raw.rates) if raw is not None else None
    if bare_cpu and raw_cpu:
        cost = bare_cpu / raw_cpu
        met = "met" if cost <= RAW_CPU_TARGET else "NOT met"
        print(
            f"\nserver CPU per read, ORM (bare) / driver (bare-raw): {cost:.2f} "
            f"(target <= {RAW_CPU_TARGET:.1f}: {met})"
        )
    errors = sum(sc.errors for sc in scenarios)
    for sc in scenarios:
        if sc.first_error:
            print(f"first error in {sc.name}: {sc.first_error}")
    print(
        "\nx bare: median req/s over the rounds divided by the bare route's, same run. "
        "Targets from the issue.\nNot a test: nothing is asserted."
    )
    _warn_if_not_server_bound(args, scenarios)
    return 1 if errors else 0


def _warn_if_not_server_bound(args: argparse.Namespace, scenarios: list[Scenario]) -> None:
    """The ratios mean something only while the server, not the client, is the bottleneck."""
    client = max(statistics.median(sc.client_cpu) for sc in scenarios) / args.client_procs
    server = [statistics.median(sc.server_cpu) for sc in scenarios if sc.server_cpu]
    if client > 0.7:
        print(
            f"WARNING: a client process used {client:.2f} core: the load generator is "
            "(near) saturated, so the ratios are squeezed towards 1. Use --client raw."
        )
    if server and min(server) < 0.8:
        print(
            f"WARNING: the server used only {min(server):.2f} core in some scenario: it was "
            "not the bottleneck (client, database or a busy machine was); read the "
            "server us/req columns rather than req/s."
        )


def _per_request(cpu: list[float], rates: list[float]) -> float | None:
    if len(cpu) != len(rates) or not cpu:
        return None
    return statistics.median(c / r * 1e6 for c, r in zip(cpu, rates, strict=True) if r)


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C (even if started with SIGINT ignored, e.g. as a background job) and SIGTERM
    # both end the run the same way: the server and the client processes are stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
