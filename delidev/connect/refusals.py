"""Connect errors answered from ASGI middleware, before the Connect runtime reads the request.

The runtime answers every error of a call it serves; this answers, in the same unary JSON
form (``{"code": ..., "message": ...}``), the calls refused before it: a header that is not
UTF-8, a client over a per-address rate (``rate_limits``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import Send


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Sends a whole Connect unary error response: ``status``, ``code`` (a Connect code name,
    e.g. ``invalid_argument``), ``message``, and any extra ``headers``."""
    body = json.dumps({"code": code, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
