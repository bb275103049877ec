"""uvicorn's HTTP/1.1 protocol, with a deadline for a request's headers.

Written by hand because uvicorn has no such timeout: it arms its keep-alive timer only
after a response, so a connection that opens and then sends its headers slowly (or not
at all) is held open for ever, and a few hundred of them hold the server's sockets
("slowloris"). Here every connection, and every further request on a kept-alive one,
must complete its headers within the deadline; otherwise it is answered 408 and closed.
The body is not covered: once the headers are in, the request belongs to the app.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_BODY = b"request headers were not complete in time"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"%s"
) % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that closes connections whose headers do not arrive in time
    (``header_timeout`` seconds, set by ``with_header_timeout``)."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()  # a further request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

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
        # Pipelined behind a response still being written, a 408 would corrupt that one.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to give uvicorn (``http=``) for a deadline of ``seconds``."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})
