"""How far the fuzz suite pushes the inputs that once crashed or froze the server.

Issue 9 item 1: protobuf-py's native JSON parser overflowed the C stack on ``'[' * 15000``
(SIGSEGV); item 2: fragments spreading the previous one twice took exponential time. Both
are refused up front now, so the suite generates them far past the old breaking points.
"""

from __future__ import annotations

MAX_JSON_NESTING = 20_000
"""Deepest JSON nesting generated for Connect bodies and raw GraphQL bodies."""

MAX_PARSED_NESTING = 500
"""Deepest nesting of a value the test itself builds with ``json`` (Python's recursion limit
bounds what the stdlib can encode)."""

MAX_WIRE_NESTING = 20_000
"""Deepest nesting of length-delimited fields in binary bodies."""

MAX_FRAGMENT_DEPTH = 30
"""Deepest chain of fragments that each spread the previous one twice (2^30 expanded)."""
