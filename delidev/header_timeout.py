"""uvicorn's HTTP/1.1 protocol, with deadlines for a request's headers and body and bounds
on the headers' size.

Written by hand because uvicorn has none of them:

- no timeout: it arms its keep-alive timer only after a response, so a connection that
  opens and then sends its headers slowly (or not at all) is held open for ever, and a few
  hundred of them hold the server's sockets ("slowloris"). Here every connection, and
  every further request on a kept-alive one, must complete its headers within the
  deadline; otherwise it is answered 408 and closed.
- the same for a body: a request that announces a body and then stops sending it held its
  connection and its handler (waiting in ``receive()``) for ever. Here a body that goes
  ``body_timeout`` seconds without a byte, while the server is reading, is answered 408 and
  the connection closed (the handler sees a disconnect). Idle time, as nginx's
  ``client_body_timeout``: a slow upload that keeps sending is not cut.
- no size limit: it keeps every header line a client sends (one connection held 1.8 GB
  with 400 MB of headers), and it grows the URL by copying it for every piece that
  arrives (a URL sent in small pieces held the event loop for seconds). Here the request
  line and headers together may hold at most ``MAX_HEAD_BYTES`` and ``MAX_HEADERS``
  headers, the URL at most ``MAX_URL_BYTES``: past that the request is answered 431 (or
  414 for the URL) and the connection closed, as nginx and Node do.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The request line and headers together (Node allows 16 KiB, nginx 4 x 8 KiB by default).
MAX_HEAD_BYTES = 64 * 1024
MAX_URL_BYTES = 32 * 1024
MAX_HEADERS = 256


def _answer(status: bytes, text: str) -> bytes:
    body = text.encode()
    return (
        b"HTTP/1.1 %s\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\n"
        b"connection: close\r\n"
        b"\r\n"
        b"%s"
    ) % (status, len(body), body)


_URL_TOO_LONG = _answer(
    b"414 URI Too Long", f"the request URL is longer than {MAX_URL_BYTES} bytes"
)
_HEAD_TOO_LARGE = _answer(
    b"431 Request Header Fields Too Large",
    f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes",
)
_TOO_MANY_HEADERS = _answer(
    b"431 Request Header Fields Too Large", f"the request has more than {MAX_HEADERS} headers"
)


class _Refused(Exception):
    """Raised by a parser callback to stop parsing a request whose head is too large."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer


_TIMEOUT_RESPONSE = _answer(b"408 Request Timeout", "request headers were not complete in time")
_BODY_TIMEOUT_RESPONSE = _answer(b"408 Request Timeout", "the request body stopped arriving")


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that closes connections whose headers do not arrive in time
    (``header_timeout`` seconds, set by ``with_header_timeout``)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        # While a request's body is expected: the timer, and when its last byte came (the
        # timer is not moved for every piece; when it fires early it waits the rest).
        self._body_deadline: asyncio.TimerHandle | None = None
        self._body_seen = 0.0
        # Between requests or within a request's head: bytes received (parsed or not yet)
        # and what the parser handed over of the URL and headers.
        self._in_head = True
        self._received = 0
        self._url_bytes = 0
        self._head_bytes = 0
        self._headers = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        self._disarm_body_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, but a request whose head is too large is answered 431 or 414 (uvicorn
        would answer any error a parser callback raises with a 400)."""
        self._unset_keepalive_if_required()
        if self._in_head:
            self._received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _Refused):
                self._refuse(error.__context__.answer)
                return
            self._invalid()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # One line still unfinished (the parser keeps a header until its end arrives).
        if self._in_head and self._received > MAX_HEAD_BYTES + MAX_URL_BYTES:
            self._refuse(_HEAD_TOO_LARGE)

    def _invalid(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _refuse(self, answer: bytes) -> None:
        self._disarm_header_deadline()
        self._disarm_body_deadline()
        if self.transport.is_closing():
            return
        # Pipelined behind a response still being written, an answer would corrupt that one.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer)
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._url_bytes = self._head_bytes = self._headers = 0
        self._arm_header_deadline()  # a further request on a kept-alive connection

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > MAX_URL_BYTES:
            raise _Refused(_URL_TOO_LONG)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._headers > MAX_HEADERS:
            raise _Refused(_TOO_MANY_HEADERS)
        if self._url_bytes + self._head_bytes > MAX_HEAD_BYTES:
            raise _Refused(_HEAD_TOO_LARGE)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        self._in_head = False
        # Trailers after a chunked body (the parser hands them over as headers) get a
        # budget of their own.
        self._received = self._url_bytes = self._head_bytes = self._headers = 0
        super().on_headers_complete()
        # A body may follow (no way to tell yet: a request without one completes before
        # the parser returns, and that disarms this). Not for an upgrade, which has none.
        if not self.parser.should_upgrade():
            self._body_seen = self.loop.time()
            if self._body_deadline is None:
                self._body_deadline = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        self._body_seen = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm_body_deadline()
        super().on_message_complete()
        self._in_head = True  # what follows is the next request's head

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                self.header_timeout, self._headers_timed_out
            )

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_timed_out(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        # The server is not reading (a pipelined request waits its turn, or a body fills
        # the buffer): the rest of the head cannot arrive yet, through no fault of the
        # client's. The deadline starts again.
        if self.flow.read_paused or self.pipeline:
            self._arm_header_deadline()
            return
        self._refuse(_TIMEOUT_RESPONSE)

    def _disarm_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _body_timed_out(self) -> None:
        self._body_deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        idle = self.loop.time() - self._body_seen
        # Not the client's fault: the server is not reading (the handler has not taken what
        # came, or a pipelined request waits its turn), or the client waits for the
        # "100 Continue" the handler has not asked for yet. Then, or when a byte came since
        # the timer was set, it waits again.
        if (
            idle < self.body_timeout
            or self.flow.read_paused
            or self.pipeline
            or (cycle is not None and cycle.waiting_for_100_continue)
        ):
            self._body_deadline = self.loop.call_later(
                max(self.body_timeout - idle, 0.01)
                if idle < self.body_timeout
                else self.body_timeout,
                self._body_timed_out,
            )
            return
        if cycle is not None and cycle.response_complete:
            return  # answered already: what is left of the body no longer matters
        if cycle is None or not cycle.response_started:
            self.transport.write(_BODY_TIMEOUT_RESPONSE)
        self.logger.info("closed a connection whose request body stopped arriving")
        self.transport.close()


def with_header_timeout(
    seconds: float, body_seconds: float = HeaderTimeoutProtocol.body_timeout
) -> type[HeaderTimeoutProtocol]:
    """The protocol class to give uvicorn (``http=``) for a deadline of ``seconds`` for the
    headers and of ``body_seconds`` without a byte of a body."""
    return type(
        "HeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout": seconds, "body_timeout": body_seconds},
    )
