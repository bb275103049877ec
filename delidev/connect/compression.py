"""Request bodies in gzip, decompressed with a bound on the work as well as on the output.

connectrpc's ``GzipCompression`` takes a body of several gzip members (RFC 1952 allows
them) by handing the rest of the input to a new decompressor for each: zlib copies that
rest every time, so a 4 MiB body of 200,000 empty members held the event loop for half a
minute. Clients send one member; here at most ``MAX_MEMBERS`` are taken, and a body with
more is refused (invalid_argument, as any body that does not decompress).
"""

from __future__ import annotations

import zlib

from connectrpc.code import Code
from connectrpc.compression.gzip import GzipCompression
from connectrpc.errors import ConnectError

MAX_MEMBERS = 16


class BoundedGzip(GzipCompression):
    """``GzipCompression`` that takes at most ``MAX_MEMBERS`` gzip members."""

    def decompress(
        self, data: bytes | bytearray | memoryview, read_max_bytes: int | None = None
    ) -> bytes:
        if not data:
            return b""
        parts: list[bytes] = []
        total = 0
        rest: bytes | bytearray | memoryview = data
        for _ in range(MAX_MEMBERS):
            decompressor = zlib.decompressobj(wbits=31)
            while True:
                room = 0 if read_max_bytes is None else read_max_bytes + 1 - total
                out = decompressor.decompress(rest, room)
                total += len(out)
                parts.append(out)
                if read_max_bytes is not None and total > read_max_bytes:
                    raise ConnectError(
                        Code.RESOURCE_EXHAUSTED,
                        f"message is larger than configured max {read_max_bytes}",
                    )
                if decompressor.eof:
                    break
                tail = decompressor.unconsumed_tail
                if not tail:
                    raise EOFError(
                        "compressed data ended before the end-of-stream marker was reached"
                    )
                if not out and len(tail) == len(rest):
                    raise zlib.error("decompressor made no progress")
                rest = tail
            rest = decompressor.unused_data.lstrip(b"\x00")  # padding, as gzip allows
            if not rest:
                return b"".join(parts)
        raise ValueError(f"a gzip body may hold at most {MAX_MEMBERS} members")
