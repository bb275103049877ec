"""The live fan-out's floor: the least a Python process can do to push a log chunk to N
WebSocket subscribers, for ``bench_live.py``'s same-run comparison.

    python bench/_live_floor.py --port N

One process, asyncio on uvloop, no framework. It speaks just enough of two protocols:

- WebSocket (``GET /graphql``): websockets' sans-I/O ``ServerProtocol`` does the handshake
  (permessage-deflate with ``server_no_context_takeover``, as DeliDev's server negotiates it)
  and reads the client's few frames. ``connection_init`` is acknowledged; ``subscribe``
  makes the connection a follower.
- HTTP/1.1 (``POST`` of an AppendLog body, JSON, on keep-alive connections): the first
  chunk's text becomes one ``next`` message, compressed once, framed once, and written to
  every follower's transport in a loop before the answer goes back.

No database, no authentication, no GraphQL, no per-connection id in the message: what is
left is the kernel's sends and the event loop. The subscribers and the publisher are the
same as against the real server, so the latency measured here is what this machine gives
at best, and a target below it cannot be met on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import zlib

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

_FOLLOWERS: dict[asyncio.Transport, bool] = {}  # transport -> negotiated compression


def _frame(first: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 0x10000:
        return bytes((first, 126)) + size.to_bytes(2, "big") + payload
    return bytes((first, 127)) + size.to_bytes(8, "big") + payload


def fan_out(text: str) -> int:
    """Writes ``text`` as one text message to every follower; returns how many."""
    data = text.encode()
    plain = _frame(0x81, data)
    encoder = zlib.compressobj(wbits=-15)
    compressed = encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH)
    deflated = _frame(0xC1, compressed[:-4])  # RFC 7692: without the sync flush's tail
    for transport, deflate in _FOLLOWERS.items():
        transport.write(deflated if deflate else plain)
    return len(_FOLLOWERS)


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.ws: ServerProtocol | None = None
        self.sequence = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            _FOLLOWERS.pop(self.transport, None)

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self._websocket(data)
            return
        self.buffer += data
        while True:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            if head.startswith(b"GET "):
                self.ws = ServerProtocol(
                    subprotocols=[Subprotocol("graphql-transport-ws")],
                    extensions=[ServerPerMessageDeflateFactory(server_no_context_takeover=True)],
                    max_size=None,
                )
                buffered, self.buffer = self.buffer, b""
                self._websocket(buffered)
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            body, self.buffer = rest[:length], rest[length:]
            self._publish(body)

    def _publish(self, body: bytes) -> None:
        assert self.transport is not None
        chunks = json.loads(body).get("chunks", [])
        for chunk in chunks:
            piece = {"offset": self.sequence, "data": chunk["data"], "final": False}
            fan_out(
                '{"id":"1","type":"next","payload":'
                + json.dumps({"data": {"sessionLog": piece}})
                + "}"
            )
            self.sequence += 1
        answer = json.dumps({"nextSequence": str(self.sequence)}).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer
        )

    def _websocket(self, data: bytes) -> None:
        ws, transport = self.ws, self.transport
        assert ws is not None
        assert transport is not None
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                ws.send_response(ws.accept(event))
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                kind = json.loads(bytes(event.data)).get("type")
                if kind == "connection_init":
                    ws.send_text(b'{"type":"connection_ack"}')
                elif kind == "subscribe":
                    _FOLLOWERS[transport] = bool(ws.extensions)
        for out in ws.data_to_send():
            if out:
                transport.write(out)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
