"""WebSocket compression that costs one compression per log piece, not one per follower.

A log piece followed by a thousand GraphQL subscribers becomes a thousand ``next`` messages
that differ only in their subscription id. With ordinary permessage-deflate, each connection
compresses its copy with its own compressor, and that was half of the server's time at a
thousand followers. Here:

- the server negotiates ``server_no_context_takeover``: each message it sends is compressed
  on its own, never referring to earlier ones (clients decode it like any other message);
- a sender may mark the start of a message as shared (``shared_prefix``): its compressed
  form is computed once and reused by every connection, and only the rest (the id, a few
  bytes) is appended to each, as a stored (uncompressed) DEFLATE block.

The output is ordinary permessage-deflate (RFC 7692); only who does the work changes.

``FrameWriter`` goes one step further for the fan-out's hot path: it frames such a message
itself and hands the bytes to the connection's transport, skipping the ASGI, uvicorn and
websockets layers (about half the cost of a send), whenever the connection is open and its
buffer is not full; otherwise the caller sends the ordinary way.

``WebSocketProtocol`` subclasses uvicorn's non-public websockets-sansio protocol and reads
its private state; uvicorn's version is pinned (pyproject.toml). ``missing_internals``
checks that what it uses is there; ``protocol_class`` (used by ``delidev.cli``) falls back
to uvicorn's ordinary protocol, with one warning, when it is not or when
``DELIDEV_WS_DEFLATE_BYPASS`` is off: then ``FrameWriter.of`` finds no writer and messages
are sent and compressed the ordinary way (slower, same messages).
"""

from __future__ import annotations

import contextvars
import logging
import zlib
from collections.abc import Mapping
from typing import Any

import uvicorn.config
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

_SYNC_TAIL = b"\x00\x00\xff\xff"
# The scope extension under which a connection's protocol object is found.
PROTOCOL_EXTENSION = "delidev.websocket.protocol"
_MAX_STORED = 0xFFFF
try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    # uvicorn's ordinary protocol, used when ours is off or cannot be used.
    ORDINARY_PROTOCOL = "websockets-sansio"
except ImportError:  # a uvicorn without it: ``missing_internals`` says so
    WebSocketsSansIOProtocol = object  # type: ignore[misc,assignment]  # never served then
    ORDINARY_PROTOCOL = "auto"

log = logging.getLogger(__name__)

# What ``WebSocketProtocol`` and ``FrameWriter`` use of uvicorn's protocol: methods of the
# class, and attributes its methods set on the instance (read from their code, since there
# is no instance before a connection).
_SANSIO_METHODS = ("__init__", "connection_made", "handle_connect", "handle_ping", "run_asgi")
_SANSIO_ATTRIBUTES = {
    "__init__": ("config", "conn", "close_sent", "disconnected", "writable"),
    "connection_made": ("transport",),
    "handle_connect": ("scope", "handshake_complete", "run_asgi"),
}
_CONFIG_ATTRIBUTES = ("ws_per_message_deflate", "ws_max_size")


def missing_internals() -> list[str]:
    """The uvicorn internals ``WebSocketProtocol`` uses that this uvicorn lacks (none with
    the pinned version)."""
    base: Any = WebSocketsSansIOProtocol
    if base is object:
        return ["uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol"]
    missing = [f"WebSocketsSansIOProtocol.{m}" for m in _SANSIO_METHODS if not hasattr(base, m)]
    for method, names in _SANSIO_ATTRIBUTES.items():
        code = getattr(getattr(base, method, None), "__code__", None)
        used = code.co_names if code is not None else ()
        missing += [f"WebSocketsSansIOProtocol.{n}" for n in names if n not in used]
    config_names = uvicorn.config.Config.__init__.__code__.co_names
    missing += [f"uvicorn Config.{n}" for n in _CONFIG_ATTRIBUTES if n not in config_names]
    return missing


def protocol_class(enabled: bool) -> type[Any] | str:
    """What uvicorn's ``ws`` option gets: ``WebSocketProtocol`` when ``enabled`` and this
    uvicorn has what it uses; else ``FALLBACK_PROTOCOL`` (with one warning when it was
    wanted but cannot be used)."""
    if not enabled:
        return FALLBACK_PROTOCOL
    missing = missing_internals()
    if missing:
        log.warning(
            "WebSocket compression bypass off: this uvicorn lacks %s; using uvicorn's "
            "ordinary protocol (works, slower with many followers)",
            ", ".join(missing),
        )
        return FALLBACK_PROTOCOL
    return WebSocketProtocol


class SharedPrefix:
    """The first bytes of a message that many connections send; its compressed forms (one
    per window size and compressor setting) are kept with it."""

    __slots__ = ("compressed", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.compressed: dict[tuple[int, tuple[tuple[str, Any], ...]], bytes] = {}

    def compressed_for(self, window_bits: int, settings: dict[str, Any]) -> bytes:
        key = (window_bits, tuple(sorted(settings.items())))
        found = self.compressed.get(key)
        if found is None:
            encoder = zlib.compressobj(wbits=-window_bits, **settings)
            # A sync flush ends the output on a byte boundary (with 00 00 ff ff), so more
            # blocks can follow it.
            found = encoder.compress(self.data) + encoder.flush(zlib.Z_SYNC_FLUSH)
            self.compressed[key] = found
        return found

    def compressed_by(self, extension: SharedPrefixDeflate) -> bytes:
        """``compressed_for`` with the extension's settings (the common case, made cheap:
        it runs once per message)."""
        found = self.compressed.get(extension.settings_key)
        if found is None:
            found = self.compressed_for(
                extension.local_max_window_bits, extension.compress_settings
            )
        return found


_shared: contextvars.ContextVar[SharedPrefix | None] = contextvars.ContextVar(
    "delidev_ws_shared_prefix", default=None
)


class shared_prefix:  # noqa: N801  # used like a function: ``with shared_prefix(p):``
    """Within this block, a message sent by this task that starts with ``prefix.data``
    reuses its compressed form. (A class, not a generator: it runs once per message.)"""

    __slots__ = ("_prefix", "_token")

    def __init__(self, prefix: SharedPrefix) -> None:
        self._prefix = prefix

    def __enter__(self) -> None:
        self._token = _shared.set(self._prefix)

    def __exit__(self, *exc: object) -> None:
        _shared.reset(self._token)


def _stored_block(data: bytes) -> bytes:
    size = len(data)
    return b"\x00" + size.to_bytes(2, "little") + (size ^ 0xFFFF).to_bytes(2, "little") + data


def stored_blocks(data: bytes) -> bytes:
    """``data`` as uncompressed DEFLATE blocks (each: a byte-aligned header, LEN, NLEN)."""
    out = bytearray()
    for start in range(0, len(data), _MAX_STORED):
        piece = data[start : start + _MAX_STORED]
        size = len(piece)
        out += b"\x00" + size.to_bytes(2, "little") + (size ^ 0xFFFF).to_bytes(2, "little")
        out += piece
    return bytes(out)


class SharedPrefixDeflate(PerMessageDeflate):
    """permessage-deflate without context takeover on the sending side, which reuses the
    compressed form of a shared prefix (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings_key = (
            self.local_max_window_bits,
            tuple(sorted(self.compress_settings.items())),
        )

    def encode(self, frame: Frame) -> Frame:
        prefix = _shared.get()
        if (
            prefix is not None
            and frame.opcode is Opcode.TEXT
            and frame.fin
            and self.local_no_context_takeover
        ):
            data = frame.data if isinstance(frame.data, bytes) else bytes(frame.data)
            if data.startswith(prefix.data):
                rest = data[len(prefix.data) :]
                size = len(rest)
                # One stored block (the id: a few bytes), or more for a long rest.
                tail = _stored_block(rest) if size <= _MAX_STORED else stored_blocks(rest)
                # The message ends with an empty stored block whose last 4 bytes
                # (00 00 ff ff) are left out, as RFC 7692 7.2.1 requires: that leaves its
                # header byte, 00.
                compressed = prefix.compressed_by(self) + tail + b"\x00"
                return Frame(frame.opcode, compressed, True, True, frame.rsv2, frame.rsv3)
        return super().encode(frame)


class SharedPrefixDeflateFactory(ServerPerMessageDeflateFactory):
    """Negotiates like uvicorn's permessage-deflate (12-bit windows, memLevel 5), with
    ``server_no_context_takeover`` always on."""

    def __init__(self) -> None:
        super().__init__(
            server_no_context_takeover=True,
            server_max_window_bits=12,
            client_max_window_bits=12,
            compress_settings={"memLevel": 5},
        )

    def process_request_params(self, params: Any, accepted_extensions: Any) -> Any:
        response, negotiated = super().process_request_params(params, accepted_extensions)
        extension = SharedPrefixDeflate(
            negotiated.remote_no_context_takeover,
            negotiated.local_no_context_takeover,
            negotiated.remote_max_window_bits,
            negotiated.local_max_window_bits,
            negotiated.compress_settings,
        )
        return response, extension


# Bytes a connection may leave unread before a ping of its own is its last (live output is
# held back well before this: see ``FrameWriter.write_text`` and uvicorn's ``writable``).
PONG_BACKLOG = 4 * 1024 * 1024


class BoundedPongs(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, which answers each ping at once whatever is
    still unsent: a client that sent pings and never read made the server keep its pongs
    without bound (400 MB of pings, 400 MB kept). With ``PONG_BACKLOG`` bytes unsent, the
    connection is dropped instead."""

    def handle_ping(self) -> None:
        if self.transport.get_write_buffer_size() > PONG_BACKLOG:
            self.transport.abort()
            return
        super().handle_ping()


# What serves WebSockets when ``WebSocketProtocol`` is off or cannot be used: uvicorn's
# ordinary protocol, with bounded pongs when this uvicorn has it.
FALLBACK_PROTOCOL: type[Any] | str = (
    ORDINARY_PROTOCOL if ORDINARY_PROTOCOL == "auto" else BoundedPongs
)


class WebSocketProtocol(BoundedPongs):
    """uvicorn's websockets-sansio protocol with ``SharedPrefixDeflate`` as its
    permessage-deflate (when compression is on), which shows itself to the app in the
    scope's extensions so that ``FrameWriter`` can find it."""

    async def run_asgi(self) -> None:
        extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]  # a dict, set by handle_connect
        extensions[PROTOCOL_EXTENSION] = self
        await super().run_asgi()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            self.conn = ServerProtocol(
                extensions=[SharedPrefixDeflateFactory()],
                max_size=self.config.ws_max_size,
                logger=self.conn.logger,
            )


class FrameWriter:
    """Writes text messages that start with a shared prefix straight to one connection's
    transport, framed as websockets would frame them (one final, unmasked frame; compressed
    with ``SharedPrefixDeflate`` when the connection negotiated it)."""

    __slots__ = ("_deflate", "_protocol")

    def __init__(self, protocol: WebSocketProtocol) -> None:
        self._protocol = protocol
        self._deflate: SharedPrefixDeflate | None = next(
            (
                e
                for e in protocol.conn.extensions
                if isinstance(e, SharedPrefixDeflate) and e.local_no_context_takeover
            ),
            None,
        )

    @classmethod
    def of(cls, scope: Mapping[str, Any]) -> FrameWriter | None:
        """The writer of the connection of an ASGI scope, when our protocol serves it (see
        ``WebSocketProtocol.run_asgi``) and its handshake is done; else None."""
        protocol = scope.get("extensions", {}).get(PROTOCOL_EXTENSION)
        if not isinstance(protocol, WebSocketProtocol) or not protocol.handshake_complete:
            return None
        return cls(protocol)

    def write_text(self, prefix: SharedPrefix, rest: bytes) -> bool:
        """Writes ``prefix.data + rest`` as one text message; False (nothing written) when
        the connection is closing or its buffer is full: send it the ordinary way then,
        which waits its turn."""
        protocol = self._protocol
        if (
            protocol.close_sent
            or protocol.disconnected
            or not protocol.writable.is_set()
            or protocol.conn.state is not State.OPEN
            or protocol.transport.is_closing()
        ):
            return False
        if self._deflate is not None:
            tail = _stored_block(rest) if len(rest) <= _MAX_STORED else stored_blocks(rest)
            payload = prefix.compressed_by(self._deflate) + tail + b"\x00"
            first = 0xC1  # FIN, RSV1 (compressed), text
        else:
            payload = prefix.data + rest
            first = 0x81  # FIN, text
        size = len(payload)
        if size < 126:
            header = bytes((first, size))
        elif size < 0x10000:
            header = bytes((first, 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((first, 127)) + size.to_bytes(8, "big")
        protocol.transport.write(header + payload)
        return True
