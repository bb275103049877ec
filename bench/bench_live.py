"""Live log fan-out: N GraphQL subscribers follow one session while a worker streams into it.

    python bench/bench_live.py [--subscribers 1 100 1000] [--seconds 5] [--lines-per-second 1000]
                               [--database-url postgres://...]

One real server (``bench/_app.py``, uvicorn with delidev-server's WebSocket protocol, one
process or ``--server-procs``; a fresh SQLite file unless ``--database-url`` names a
throwaway PostgreSQL database). A worker (this process, over the real WorkerService)
appends ``--lines-per-second`` lines in ``--chunks-per-second`` chunks (10: a worker that
ships its output every 100 ms); every chunk's first line carries its send time. It sends
them through a minimal HTTP/1.1 client on one keep-alive connection (``--publisher raw``,
as ``bench_get`` loads the server; ``--publisher httpx`` for httpx, whose own ~1 ms per
request counts in the latency then). N
WebSocket clients (graphql-transport-ws, lean sans-I/O clients in ``--client-procs``
processes) subscribe to ``sessionLog`` from the start. Reported per N:

- delivered lines/s (summed over the subscribers) and publish→receive latency p50 / p99
  (AppendLog sent → the line arrives at a subscriber), and the AppendLog call's own round
  trip (p50) for comparison;
- the baseline, measured in the same run: the same lines at the same rate through a bare
  asyncio fan-out in one process (one queue per subscriber) — what delivery costs with no
  network, no database and no GraphQL;
- the server's resident memory with 1000 idle subscriptions, against none.

Prints figures, asserts nothing; every measurement is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_get import (  # noqa: E402
    free_port,
    process_cpu_s,
    read_response,
    start_server,
    stop_server,
)

CHUNKS_PER_S = 10  # a worker ships its output ten times a second (--chunks-per-second)
# Issue 16's targets: p50 at one subscriber, p99 at 1000.
TARGET_P50_1_MS = 2.0
TARGET_P99_MS = 20.0
TARGET_RATIO = 0.5
TARGET_IDLE_MB = 100.0
# Latencies of the first second are not counted (both here and in the baseline): the
# subscribers' first messages pay for their connections' set-up.
WARMUP_S = 1.0
_STAMP_B = re.compile(rb"ts=(\d+) seq=(\d+)")


def stamps(data: bytes) -> list[tuple[int, int]]:
    """The (send time, sequence) stamps in ``data``: each chunk's first line. Found with
    ``bytes.find`` and the expression matched only there: the client's own cost stays out
    of the latency it measures (a ``findall`` over every message cost more than the rest of
    the client's work on it)."""
    found = []
    at = data.find(b"ts=")
    while at >= 0:
        match = _STAMP_B.match(data, at)
        if match is not None:
            found.append((int(match[1]), int(match[2])))
        at = data.find(b"ts=", at + 3)
    return found


QUERY = "subscription($id: ID!) { sessionLog(sessionId: $id) { offset data final } }"


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's workers, with --server-procs)."""
    pids = [pid]
    for p in pids:
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def server_cpu_s(pid: int) -> float:
    return sum(process_cpu_s(p) or 0.0 for p in family(pid))


def rss_mb(pid: int) -> float:
    """Resident memory of the server (all its processes)."""
    return sum(_rss_mb(p) for p in family(pid))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Api:
    def __init__(self, base: str) -> None:
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends them, so that a
        # request never goes out on a connection the server is closing.
        self.http = httpx.AsyncClient(
            base_url=base, timeout=30, limits=httpx.Limits(keepalive_expiry=1.0)
        )

    async def __call__(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post(f"/delidev.v1.{method}", json=body)
        r.raise_for_status()
        return dict(r.json())

    async def job(self) -> tuple[str, str, str]:
        """A running session: (session id, worker id, lease)."""
        ws = await self("WorkspaceService/Create", {"name": f"b{uuid.uuid4().hex[:6]}"})
        repo = await self(
            "RepositoryService/Add",
            {
                "workspaceId": ws["workspace"]["id"],
                "remoteUrl": f"https://github.com/b/{uuid.uuid4().hex}",
            },
        )
        group = await self(
            "RepositoryGroupService/Create",
            {"workspaceId": ws["workspace"]["id"], "repositoryIds": [repo["repository"]["id"]]},
        )
        await self(
            "TaskService/CreateUnit", {"repositoryGroupId": group["group"]["id"], "prompt": "b"}
        )
        worker = await self("WorkerService/Register", {"name": "b", "endpointUrl": "http://b:1"})
        job = (await self("WorkerService/GetTask", {"workerId": worker["workerId"]}))["job"]
        return job["sessionId"], worker["workerId"], job["leaseToken"]


class _LeanSubscriber(asyncio.Protocol):
    """One subscriber on a bare asyncio protocol with websockets' sans-I/O client (frames,
    permessage-deflate): no task, stream or future per message, so that the load generator,
    which shares the machine with the server, costs as little as it can. Each ``next``
    message is not parsed as JSON: lines are counted as the escaped newlines in it, and the
    stamps are read with a regular expression."""

    def __init__(self, url: str, session_id: str, sink: _Sink, compression: bool) -> None:
        self.proto = ClientProtocol(
            parse_uri(url),
            subprotocols=[Subprotocol("graphql-transport-ws")],
            extensions=[ClientPerMessageDeflateFactory()] if compression else [],
            max_size=None,
        )
        self.session_id = session_id
        self.sink = sink
        self.ready = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.subscribed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.proto.send_request(self.proto.connect())
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.proto.data_to_send():
            if data:
                self.transport.write(data)

    def _send(self, message: dict[str, Any]) -> None:
        self.proto.send_text(json.dumps(message).encode())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if not isinstance(event, Frame):  # the handshake's response
                self._send({"type": "connection_init", "payload": {}})
                continue
            if event.opcode is not Opcode.TEXT:
                continue
            self._text(bytes(event.data), now)
        if self.proto.writes:
            self._flush()

    def _text(self, body: bytes, now: int) -> None:
        if not self.subscribed:  # connection_ack
            self.subscribed = True
            payload = {"query": QUERY, "variables": {"id": self.session_id}}
            self._send({"id": "1", "type": "subscribe", "payload": payload})
            if not self.ready.done():
                self.ready.set_result(None)
            return
        if body.find(b'"next"', 0, 64) < 0:
            if body.find(b'"ping"', 0, 64) >= 0:  # graphql-transport-ws keep-alive
                self._send({"type": "pong"})
            return
        # The lines are the escaped newlines: the only backslashes in these messages, so
        # counted as one byte (a memchr-speed scan, not a two-byte search).
        self.sink.lines += body.count(b"\\")
        self.sink.latencies.extend((q, (now - t) / 1e6) for t, q in stamps(body))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed"))


_INFLATE_TAIL = b"\x00\x00\xff\xff"


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame, masked as RFC 6455 requires, with an all-zero key (so the
    payload goes out as is: masking XORs it with the key)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 0x10000:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


class FrameReader:
    """The server's frames, parsed by hand (RFC 6455 and 7692): what a subscriber needs of
    them and no more, so that the load generator costs a fraction of what websockets'
    general parser does (~4 x less per message here). ``feed`` takes bytes as they come
    and returns the complete messages in them as ``(opcode, payload)``, text inflated when
    it was compressed; fragmented messages are joined, control frames come as they are."""

    __slots__ = ("_buffer", "_inflater", "_part_compressed", "_part_opcode", "_parts")

    def __init__(self, compressed: bool) -> None:
        self._buffer = b""
        # One inflater for the connection: it decodes messages compressed on their own
        # (server_no_context_takeover) and messages that refer to earlier ones alike.
        self._inflater = zlib.decompressobj(wbits=-15) if compressed else None
        self._parts: list[bytes] = []
        self._part_opcode = 0
        self._part_compressed = False

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        messages: list[tuple[int, bytes]] = []
        at, end = 0, len(buffer)
        while end - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            if second & 0x80:
                raise ValueError("a server frame must not be masked")
            size = second & 0x7F
            start = at + 2
            if size == 126:
                if end - start < 2:
                    break
                size = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif size == 127:
                if end - start < 8:
                    break
                size = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            if end - start < size:
                break
            payload = buffer[start : start + size]
            at = start + size
            opcode = first & 0x0F
            if opcode >= 8:  # control frames are never fragmented nor compressed
                messages.append((opcode, payload))
                continue
            if opcode:  # a new message (0 continues one)
                self._part_opcode = opcode
                self._part_compressed = bool(first & 0x40)
            if not first & 0x80:
                self._parts.append(payload)
                continue
            if self._parts:
                payload = b"".join((*self._parts, payload))
                self._parts.clear()
            if self._part_compressed:
                if self._inflater is None:
                    raise ValueError("a compressed frame on a connection without compression")
                payload = self._inflater.decompress(payload + _INFLATE_TAIL)
            messages.append((self._part_opcode, payload))
        self._buffer = buffer[at:] if at < end else b""
        return messages


class _FrameSubscriber(_LeanSubscriber):
    """A subscriber that hands the opening handshake to websockets and then reads the
    server's frames itself (``FrameReader``) and writes its few frames itself: the default
    (``--subscriber frames``). What it measures is the same; only its own cost differs."""

    def __init__(self, url: str, session_id: str, sink: _Sink, compression: bool) -> None:
        super().__init__(url, session_id, sink, compression)
        self.reader: FrameReader | None = None

    def _send(self, message: dict[str, Any]) -> None:
        if self.reader is None:
            super()._send(message)
            return
        assert self.transport is not None
        self.transport.write(_client_frame(0x1, json.dumps(message).encode()))

    def data_received(self, data: bytes) -> None:
        if self.reader is None:
            # The handshake's response (the server says nothing more before our first
            # message, so no frame is left behind in websockets' buffer).
            self.proto.receive_data(data)
            for event in self.proto.events_received():
                if isinstance(event, Frame):
                    raise RuntimeError("a frame before the handshake's end")
                self.reader = FrameReader(compressed=bool(self.proto.extensions))
                self._send({"type": "connection_init", "payload": {}})
            return
        now = time.time_ns()
        for opcode, body in self.reader.feed(data):
            if opcode == 0x1:
                self._text(body, now)
            elif opcode == 0x9:  # ping: pong with its data
                assert self.transport is not None
                self.transport.write(_client_frame(0xA, body))
            elif opcode == 0x8:
                assert self.transport is not None
                self.transport.close()


SUBSCRIBERS = {"frames": _FrameSubscriber, "websockets": _LeanSubscriber}


@dataclass
class _Sink:
    lines: int = 0
    latencies: list[tuple[int, float]] = field(default_factory=list)


# Subscribers connect from many loopback addresses, this many from each, as browsers come
# from many machines: the server caps WebSockets per client address
# (``DELIDEV_GRAPHQL_WS_MAX_CONNECTIONS_PER_ADDRESS``, 500), and the bench keeps its defaults.
SUBSCRIBERS_PER_ADDRESS = 100


def source_address(index: int) -> str:
    """The loopback address subscriber ``index`` (0-based, unique in the run) connects from:
    127.0.<1 + index // 100 // 250>.<1 + index // 100 % 250>."""
    block = index // SUBSCRIBERS_PER_ADDRESS
    return f"127.0.{1 + block // 250}.{1 + block % 250}"


async def subscriber(
    url: str,
    session_id: str,
    sink: _Sink,
    compression: bool,
    index: int = 0,
    kind: str = "frames",
) -> asyncio.Transport:
    """Opens one subscription (from ``source_address(index)``); returns its transport once
    the server acknowledged it."""
    loop = asyncio.get_running_loop()
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    transport, protocol = await loop.create_connection(
        lambda: SUBSCRIBERS[kind](url, session_id, sink, compression),
        host,
        int(port),
        local_addr=(source_address(index), 0),
    )
    await asyncio.wait_for(protocol.ready, 60)
    return transport


def _client_process(
    ws_url: str,
    session_id: str,
    count: int,
    conn: Connection,
    compression: bool,
    first: int,
    kind: str,
) -> None:
    """A client process: ``count`` subscribers; reports (lines, latencies) when told how many
    lines were sent (or after a timeout)."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        sink = _Sink()
        transports = []
        for i in range(count):
            transports.append(
                await subscriber(ws_url, session_id, sink, compression, first + i, kind)
            )
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        conn.send("ready")
        loop = asyncio.get_running_loop()
        sent = await loop.run_in_executor(None, conn.recv)
        deadline = time.perf_counter() + 20
        while sink.lines < sent * count and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        conn.send((sink.lines, sink.latencies))
        for transport in transports:
            transport.close()

    asyncio.run(main())


class RawPoster:
    """Connect unary calls on one keep-alive HTTP/1.1 connection, with a minimal client (the
    request built by hand, the response parsed just enough): the publisher's own cost stays
    out of the latency it stamps."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __call__(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST /delidev.v1.{method} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode()
            + data
        )
        status, answer = await read_response(self.reader)
        if status != 200:
            raise RuntimeError(f"{method}: HTTP {status}: {answer[:200]!r}")
        return dict(json.loads(answer))

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()


Call = Any  # Api or RawPoster: (method, body) -> awaitable answer


async def publish(api: Call, session_id: str, worker_id: str, lease: str, lines_per_s: int,
                  seconds: float, calls: list[float]) -> int:  # fmt: skip
    """Streams the lines; ``calls`` gets each AppendLog's round trip in ms."""
    per_chunk = max(1, lines_per_s // CHUNKS_PER_S)
    filler = "".join(
        f"  output line {i:04} of the agent, with some text\n" for i in range(per_chunk - 1)
    )
    sequence, sent = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        data = f"ts={time.time_ns()} seq={sequence}\n{filler}"
        chunk = {"sequence": sequence, "data": data}
        t0 = time.perf_counter()
        await api("WorkerService/AppendLog", {"workerId": worker_id, "sessionId": session_id,
                                               "leaseToken": lease, "chunks": [chunk]})  # fmt: skip
        calls.append((time.perf_counter() - t0) * 1000)
        sequence += 1
        sent += per_chunk
        target = start + sequence / CHUNKS_PER_S
        await asyncio.sleep(max(0.0, target - time.perf_counter()))
    return sent


async def baseline(n: int, lines_per_s: int, seconds: float) -> tuple[float, float, float]:
    """The same lines at the same rate through a bare asyncio fan-out (one queue each)."""
    warm = int(CHUNKS_PER_S * WARMUP_S)
    queues: list[asyncio.Queue[bytes]] = [asyncio.Queue() for _ in range(n)]
    latencies: list[float] = []
    counts = [0]
    per_chunk = max(1, lines_per_s // CHUNKS_PER_S)
    filler = "".join(
        f"  output line {i:04} of the agent, with some text\n" for i in range(per_chunk - 1)
    )

    async def consume(q: asyncio.Queue[bytes]) -> None:
        while True:
            data = await q.get()
            now = time.time_ns()
            counts[0] += data.count(b"\n")
            latencies.extend((now - t) / 1e6 for t, q in stamps(data) if q >= warm)

    consumers = [asyncio.create_task(consume(q)) for q in queues]
    start = time.perf_counter()
    sequence = 0
    while time.perf_counter() - start < seconds:
        data = f"ts={time.time_ns()} seq={sequence}\n{filler}".encode()
        for q in queues:
            q.put_nowait(data)
        sequence += 1
        await asyncio.sleep(max(0.0, start + sequence / CHUNKS_PER_S - time.perf_counter()))
    sent = sequence * per_chunk * n
    while counts[0] < sent:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - start
    for c in consumers:
        c.cancel()
    return counts[0] / elapsed, pct(latencies, 0.5), pct(latencies, 0.99)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Followed:
    """What N subscribers saw of one publishing run."""

    procs: int
    rate: float  # delivered lines/s, all subscribers together
    share: float  # of the lines sent, the share delivered
    p50: float
    p99: float
    call50: float  # the AppendLog call's own round trip, p50
    server_cpu: float  # cores
    client_cpu: float


async def follow(
    args: argparse.Namespace,
    ws_url: str,
    port: int,
    server_pid: int,
    n: int,
    job: tuple[str, str, str],
) -> Followed:
    """N subscribers (in client processes) follow the session while the lines are published
    through ``port``: the real server, or the floor."""
    session_id, worker_id, lease = job
    procs = min(args.client_procs, n)
    shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    pipes, children = [], []
    for k, share in enumerate(shares):
        parent, child = multiprocessing.Pipe()
        proc_ = multiprocessing.get_context("spawn").Process(
            target=_client_process,
            args=(
                ws_url,
                session_id,
                share,
                child,
                args.compression,
                sum(shares[:k]),
                args.subscriber,
            ),
            daemon=True,
        )
        proc_.start()
        pipes.append(parent)
        children.append(proc_)
    for pipe in pipes:
        if not await asyncio.to_thread(pipe.poll, 180) or pipe.recv() != "ready":
            raise RuntimeError("a client process did not get its subscribers ready")
    await asyncio.sleep(0.5)
    cpu0 = server_cpu_s(server_pid)
    kids0 = sum(process_cpu_s(c.pid or 0) or 0.0 for c in children)
    t0 = time.perf_counter()
    calls: list[float] = []
    # A new connection for each N: an idle one is closed by the server's keep-alive.
    poster: Call = (
        RawPoster("127.0.0.1", port) if args.publisher == "raw" else Api(f"http://127.0.0.1:{port}")
    )
    try:
        sent = await publish(poster, session_id, worker_id, lease,
                             args.lines_per_second, args.seconds, calls)  # fmt: skip
    finally:
        if isinstance(poster, RawPoster):
            await poster.aclose()
        else:
            await poster.http.aclose()
    for pipe in pipes:
        pipe.send(sent)
    results = [await asyncio.to_thread(pipe.recv) for pipe in pipes]
    elapsed = time.perf_counter() - t0
    cpu = (server_cpu_s(server_pid) - cpu0) / elapsed
    kids = (sum(process_cpu_s(c.pid or 0) or 0.0 for c in children) - kids0) / elapsed
    for c in children:
        c.join(10)
    received = sum(r[0] for r in results)
    warm = int(CHUNKS_PER_S * WARMUP_S)
    latencies = [lat for r in results for q, lat in r[1] if q >= warm]
    return Followed(
        procs=procs,
        rate=received / elapsed,
        share=received / max(1, sent * n),
        p50=pct(latencies, 0.5),
        p99=pct(latencies, 0.99),
        call50=pct(calls[CHUNKS_PER_S:], 0.5),
        server_cpu=cpu,
        client_cpu=kids,
    )


FLOOR: list[subprocess.Popen[bytes]] = []


def start_floor(log_path: Path) -> int:
    """Starts ``bench/_live_floor.py`` on a free port; returns the port once it accepts."""
    port = free_port()
    with log_path.open("ab") as log:
        FLOOR.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "_live_floor.py"), "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and FLOOR[-1].poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return port
        time.sleep(0.1)
    raise RuntimeError(f"the floor did not start: {log_path.read_text(errors='replace')}")


async def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="delidev-bench-live-"))
    url = args.database_url or f"sqlite://{tmp / 'bench.db'}"
    extra: tuple[str, ...] = () if args.compression else ("--ws-per-message-deflate", "false")
    if args.server_procs > 1:
        extra += ("--workers", str(args.server_procs))
    proc, port = start_server(url, tmp / "server.log", extra)
    base = f"http://127.0.0.1:{port}"
    ws_url = f"ws://127.0.0.1:{port}/graphql"
    api = Api(base)
    rows = []
    try:
        # Memory of idle subscriptions, first: on a server that has served nothing yet.
        session_id, _, _ = await api.job()
        before = rss_mb(proc.pid)
        idle = []
        for i in range(args.idle):
            idle.append(
                await subscriber(ws_url, session_id, _Sink(), args.compression, i, args.subscriber)
            )
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)
        after = rss_mb(proc.pid)
        for transport in idle:
            transport.close()

        floor_port = start_floor(tmp / "floor.log") if args.floor else None
        floor_url = f"ws://127.0.0.1:{floor_port}/graphql"
        for n in args.subscribers:
            session_id, worker_id, lease = await api.job()
            got = await follow(args, ws_url, port, proc.pid, n, (session_id, worker_id, lease))
            b_rate, b50, b99 = await baseline(n, args.lines_per_second, args.seconds)
            floor = None
            if floor_port is not None:
                floor = await follow(args, floor_url, floor_port, FLOOR[0].pid, n, ("", "", ""))
            rows.append((n, got, b_rate, b50, b99, floor))
            print(f"N={n:>5}: delivered {got.rate:>10,.0f} lines/s ({got.share:.1%} of sent), "
                  f"p50 {got.p50:7.1f} ms, p99 {got.p99:7.1f} ms; "
                  f"AppendLog call p50 {got.call50:5.1f} ms; "
                  f"baseline {b_rate:>10,.0f} lines/s; CPU server {got.server_cpu:.2f}, "
                  f"{got.procs} client procs {got.client_cpu:.2f}", flush=True)  # fmt: skip
            if floor is not None:
                print(f"         floor: p50 {floor.p50:7.1f} ms, p99 {floor.p99:7.1f} ms "
                      f"({floor.share:.1%} of sent); CPU floor server "
                      f"{floor.server_cpu:.2f}, client procs {floor.client_cpu:.2f}",
                      flush=True)  # fmt: skip

        print()
        print(f"{'N':>5} {'delivered/s':>12} {'x base':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'call ms':>7} {'base/s':>12} {'base p99':>9} {'floor p50':>9} "
              f"{'floor p99':>9}  targets: p50 <= {TARGET_P50_1_MS:.0f} ms at 1; p99 <= "
              f"{TARGET_P99_MS:.0f} ms and >= {TARGET_RATIO}x baseline at 1000")  # fmt: skip
        for n, got, b_rate, _b50, b99, floor in rows:
            verdict = ""
            if n == 1:
                verdict = "met" if got.p50 <= TARGET_P50_1_MS else "NOT met"
            if n == 1000:
                ok = got.p99 <= TARGET_P99_MS and got.rate >= TARGET_RATIO * b_rate
                verdict = "met" if ok else "NOT met"
            f50, f99 = (floor.p50, floor.p99) if floor is not None else (math.nan, math.nan)
            print(f"{n:>5} {got.rate:>12,.0f} {got.rate / b_rate:>7.3f} {got.p50:>7.1f} "
                  f"{got.p99:>7.1f} {got.call50:>7.1f} {b_rate:>12,.0f} {b99:>9.3f} "
                  f"{f50:>9.1f} {f99:>9.1f}  {verdict}")  # fmt: skip
        added = after - before
        verdict = "met" if added < TARGET_IDLE_MB else "NOT met"
        print(f"\n{args.idle} idle subscriptions: server RSS {before:.0f} MB -> {after:.0f} MB "
              f"(+{added:.0f} MB), target < {TARGET_IDLE_MB:.0f} MB: {verdict}")  # fmt: skip
        return 0
    finally:
        await api.http.aclose()
        stop_server(proc)
        for floor_proc in FLOOR:
            stop_server(floor_proc)


def main(argv: list[str] | None = None) -> int:
    global CHUNKS_PER_S
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 1000])
    p.add_argument("--seconds", type=float, default=5.0, help="publishing time per N")
    p.add_argument("--lines-per-second", type=int, default=1000)
    p.add_argument(
        "--chunks-per-second",
        type=int,
        default=CHUNKS_PER_S,
        help="AppendLog calls a second (the lines are spread over them)",
    )
    p.add_argument(
        "--idle", type=int, default=1000, help="idle subscriptions for the memory figure"
    )
    p.add_argument("--database-url", default=None, help="a throwaway PostgreSQL database")
    p.add_argument("--client-procs", type=int, default=2, help="processes the subscribers run in")
    p.add_argument(
        "--publisher",
        choices=("raw", "httpx"),
        default="raw",
        help="the worker's HTTP client (raw: a minimal one, the default; httpx)",
    )
    p.add_argument(
        "--subscriber",
        choices=tuple(SUBSCRIBERS),
        default="frames",
        help="the subscribers' WebSocket client (frames: parsed by hand after websockets' "
        "handshake, the default; websockets: websockets' sans-I/O protocol for every frame)",
    )
    p.add_argument(
        "--server-procs",
        type=int,
        default=1,
        help="server processes (uvicorn --workers; more than 1 needs --database-url)",
    )
    p.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor (bench/_live_floor.py: the same subscribers and publisher "
        "against a bare fan-out server)",
    )
    p.add_argument(
        "--no-compression",
        dest="compression",
        action="store_false",
        help="serve WebSockets without permessage-deflate",
    )
    args = p.parse_args(argv)
    CHUNKS_PER_S = args.chunks_per_second
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
