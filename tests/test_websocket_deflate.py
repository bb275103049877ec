"""The shared-prefix permessage-deflate: what it sends decodes, with websockets' own client
decoder, to exactly what was sent, mixed with ordinary messages, across connections; and the
check of the uvicorn internals its protocol uses. (With the bypass on, off, or off for want
of an internal, on a real server: tests/e2e/test_websocket_deflate_bypass.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import subprocess
import sys
import zlib
from types import SimpleNamespace
from typing import Any

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from delidev import websocket_deflate
from delidev.settings import Settings, SettingsError
from delidev.websocket_deflate import (
    FrameWriter,
    SharedPrefix,
    SharedPrefixDeflate,
    SharedPrefixDeflateFactory,
    WebSocketProtocol,
    shared_prefix,
    stored_blocks,
)


def _negotiate(client_offer: ClientPerMessageDeflateFactory) -> tuple[object, PerMessageDeflate]:
    """Both ends of one negotiation: the server's extension and the client's."""
    server = SharedPrefixDeflateFactory()
    response, extension = server.process_request_params(client_offer.get_request_params(), [])
    client = client_offer.process_response_params(response, [])
    return extension, client


def _text(data: str) -> Frame:
    return Frame(Opcode.TEXT, data.encode())


def _log_message(i: int, size: int) -> str:
    rng = random.Random(i)
    lines = "".join(f"line {rng.randrange(10**6)} of the agent's output\n" for _ in range(size))
    return '{"type":"next","payload":' + json.dumps({"data": {"sessionLog": {"data": lines}}})


@pytest.mark.parametrize(
    "offer",
    [
        ClientPerMessageDeflateFactory(),  # what browsers and the websockets client send
        ClientPerMessageDeflateFactory(client_max_window_bits=True),
        ClientPerMessageDeflateFactory(server_max_window_bits=10),
        ClientPerMessageDeflateFactory(client_no_context_takeover=True),
    ],
)
def test_shared_and_ordinary_messages_decode_to_what_was_sent(
    offer: ClientPerMessageDeflateFactory,
) -> None:
    server, client = _negotiate(offer)
    assert isinstance(server, SharedPrefixDeflate)
    assert server.local_no_context_takeover  # each message is compressed on its own
    sent: list[str] = []
    received: list[str] = []
    # A decoder that keeps its state across messages, as a client may: it sees any message
    # that does not end where RFC 7692 says it must.
    persistent = zlib.decompressobj(wbits=-15)
    kept: list[str] = []
    for i in range(40):
        if i % 3 == 0:  # an ordinary message (a ping, another subscription's event)
            message = json.dumps({"type": "ping", "n": i})
            frame = server.encode(_text(message))
        else:
            prefix_text = _log_message(i, size=1 + i * 37)
            prefix = SharedPrefix(prefix_text.encode())
            message = prefix_text + ',"id":"' + f"op-{i}" + '"}'
            with shared_prefix(prefix):
                frame = server.encode(_text(message))
            assert frame.data.startswith(prefix.compressed[next(iter(prefix.compressed))])
        assert frame.rsv1
        sent.append(message)
        kept.append(persistent.decompress(bytes(frame.data) + b"\x00\x00\xff\xff").decode())
        received.append(bytes(client.decode(frame).data).decode())
    assert received == sent
    assert kept == sent


def test_connections_share_the_compressed_prefix() -> None:
    first, first_client = _negotiate(ClientPerMessageDeflateFactory())
    second, second_client = _negotiate(ClientPerMessageDeflateFactory())
    text = _log_message(7, size=200)
    prefix = SharedPrefix(text.encode())
    with shared_prefix(prefix):
        a = first.encode(_text(text + ',"id":"a"}'))
        b = second.encode(_text(text + ',"id":"bb"}'))
    assert len(prefix.compressed) == 1  # compressed once for both
    head = next(iter(prefix.compressed.values()))
    assert a.data.startswith(head)
    assert b.data.startswith(head)
    assert len(head) < len(text) // 2  # and it does compress
    assert bytes(first_client.decode(a).data).decode() == text + ',"id":"a"}'
    assert bytes(second_client.decode(b).data).decode() == text + ',"id":"bb"}'


def test_a_message_not_starting_with_the_prefix_is_compressed_on_its_own() -> None:
    server, client = _negotiate(ClientPerMessageDeflateFactory())
    prefix = SharedPrefix(b'{"type":"next","payload":{"x":1}')
    with shared_prefix(prefix):
        frame = server.encode(_text('{"type":"complete","id":"1"}'))
    assert prefix.compressed == {}
    assert bytes(client.decode(frame).data) == b'{"type":"complete","id":"1"}'


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 200_000])
def test_stored_blocks_carry_any_length(size: int) -> None:
    data = bytes(random.Random(size).randrange(256) for _ in range(size))
    decoder = zlib.decompressobj(wbits=-15)
    assert decoder.decompress(stored_blocks(data) + b"\x00\x00\x00\xff\xff") == data


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


def _open_connection(extensions: list[PerMessageDeflate]) -> Any:
    """A stand-in for uvicorn's protocol object: the attributes ``FrameWriter`` reads."""
    conn = ServerProtocol()
    conn.state = State.OPEN
    conn.extensions = list(extensions)
    writable = asyncio.Event()
    writable.set()
    return SimpleNamespace(
        conn=conn, transport=_Transport(), writable=writable, close_sent=False, disconnected=False
    )


@pytest.mark.parametrize("compressed", [True, False], ids=["deflate", "plain"])
@pytest.mark.parametrize("size", [1, 3, 2_000])  # frames under 126, under 64 KiB, over
def test_the_frame_writer_writes_what_websockets_would(compressed: bool, size: int) -> None:
    server, _ = _negotiate(ClientPerMessageDeflateFactory())
    protocol = _open_connection([server] if compressed else [])
    text = _log_message(size, size=size)
    prefix = SharedPrefix(text.encode())
    closing = b',"id":"op-1"}'
    assert FrameWriter(protocol).write_text(prefix, closing)
    with shared_prefix(prefix):
        protocol.conn.send_text(prefix.data + closing)
    assert protocol.transport.written == [b"".join(protocol.conn.data_to_send())]


def test_the_frame_writer_leaves_a_full_or_closing_connection_to_the_ordinary_path() -> None:
    prefix = SharedPrefix(b'{"type":"next"')
    for change in (
        lambda p: p.writable.clear(),
        lambda p: setattr(p, "close_sent", True),
        lambda p: setattr(p, "disconnected", True),
        lambda p: setattr(p.transport, "closing", True),
        lambda p: setattr(p.conn, "state", State.CLOSING),
    ):
        protocol = _open_connection([])
        change(protocol)
        assert not FrameWriter(protocol).write_text(prefix, b"}")
        assert protocol.transport.written == []


def test_the_pinned_uvicorn_has_every_internal_the_protocol_uses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    assert websocket_deflate.missing_internals() == []
    assert websocket_deflate.protocol_class(True) is WebSocketProtocol
    # Off: uvicorn's ordinary protocol, with bounded pongs.
    assert websocket_deflate.protocol_class(False) is websocket_deflate.BoundedPongs
    assert issubclass(websocket_deflate.BoundedPongs, WebSocketsSansIOProtocol)
    assert caplog.records == []


def test_a_missing_internal_falls_back_to_uvicorns_protocol_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # What a uvicorn that renamed an attribute its protocol sets in ``__init__`` looks like.
    attributes = dict(websocket_deflate._SANSIO_ATTRIBUTES)
    attributes["__init__"] = (*attributes["__init__"], "renamed_in_a_later_uvicorn")
    monkeypatch.setattr(websocket_deflate, "_SANSIO_ATTRIBUTES", attributes)
    assert websocket_deflate.missing_internals() == [
        "WebSocketsSansIOProtocol.renamed_in_a_later_uvicorn"
    ]
    caplog.set_level(logging.WARNING)
    assert websocket_deflate.protocol_class(True) is websocket_deflate.BoundedPongs
    assert len(caplog.records) == 1
    assert "renamed_in_a_later_uvicorn" in caplog.records[0].getMessage()
    # uvicorn knows the name it falls back to.
    from uvicorn.config import WS_PROTOCOLS

    assert websocket_deflate.ORDINARY_PROTOCOL in WS_PROTOCOLS


def test_the_setting_reads_from_the_environment() -> None:
    assert Settings.from_env({}).ws_deflate_bypass is True
    assert Settings.from_env({"DELIDEV_WS_DEFLATE_BYPASS": "off"}).ws_deflate_bypass is False
    with pytest.raises(SettingsError, match="DELIDEV_WS_DEFLATE_BYPASS must be true or false"):
        Settings.from_env({"DELIDEV_WS_DEFLATE_BYPASS": "maybe"})


def test_a_uvicorn_without_the_sansio_protocol_still_serves() -> None:
    """Its module gone (a later uvicorn): the module still imports, and uvicorn picks its
    own protocol. (A process of its own: the import is what is tested.)"""
    script = (
        "import logging, sys\n"
        "logging.basicConfig()\n"
        "sys.modules['uvicorn.protocols.websockets.websockets_sansio_impl'] = None\n"
        "from delidev import websocket_deflate as w\n"
        "import delidev.graphql.log_fast_path\n"
        "print(w.missing_internals(), w.protocol_class(True))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert "WebSocketsSansIOProtocol'] auto" in done.stdout
    assert done.stderr.count("WebSocket compression bypass off") == 1
